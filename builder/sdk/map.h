/*
 * map.h - c-web-modules' <map.h>, for modules that include it by name.
 * struct map and map_* are in cweb.h.
 */
#ifndef CWEB_COMPAT_MAP_H
#define CWEB_COMPAT_MAP_H
#include "cweb.h"

#endif
