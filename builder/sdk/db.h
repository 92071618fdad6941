/*
 * db.h - c-web-modules' <db.h>, for modules that include it by name.
 * struct sqldb is in cweb.h.
 */
#ifndef CWEB_COMPAT_DB_H
#define CWEB_COMPAT_DB_H
#include "cweb.h"

#endif
