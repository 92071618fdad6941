/*
 * container.h - c-web-modules' <container.h>, for modules that include it by name.
 * struct container and container_* are in cweb.h.
 */
#ifndef CWEB_COMPAT_CONTAINER_H
#define CWEB_COMPAT_CONTAINER_H
#include "cweb.h"

#endif
