/*
 * uuid.h - c-web-modules' <uuid.h>, for modules that include it by name.
 * cweb_uuid_t and uuid_* are in cweb.h.
 */
#ifndef CWEB_COMPAT_UUID_H
#define CWEB_COMPAT_UUID_H
#include "cweb.h"

#endif
