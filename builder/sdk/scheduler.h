/*
 * scheduler.h - c-web-modules' <scheduler.h>, for modules that include it by name.
 * struct scheduler and scheduler_* are in cweb.h.
 */
#ifndef CWEB_COMPAT_SCHEDULER_H
#define CWEB_COMPAT_SCHEDULER_H
#include "cweb.h"

#endif
