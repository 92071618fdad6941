/*
 * cweb_config.h - c-web-modules' <cweb_config.h>, for modules that include it by name.
 * The limits (MAX_ROUTES, ...) and the informational server defaults are in cweb.h.
 */
#ifndef CWEB_COMPAT_CWEB_CONFIG_H
#define CWEB_COMPAT_CWEB_CONFIG_H
#include "cweb.h"

#endif
