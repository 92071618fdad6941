/*
 * defer.h - c-web-modules' <defer.h>, for modules that include it by name.
 * defer { ... } runs its block when the enclosing scope ends (GCC only).
 */
#ifndef CWEB_COMPAT_DEFER_H
#define CWEB_COMPAT_DEFER_H
#include "cweb.h"

/* A nested function run by the cleanup attribute of a dummy variable. */
#define CWEB_DEFER_CAT_(a, b) a##b
#define CWEB_DEFER_CAT(a, b) CWEB_DEFER_CAT_(a, b)
#define CWEB_DEFER_(fn, var) \
    auto void fn(int *); \
    int var __attribute__((cleanup(fn), unused)); \
    void fn(int *cweb_defer_unused_ __attribute__((unused)))
#define defer CWEB_DEFER_(CWEB_DEFER_CAT(cweb_defer_fn_, __COUNTER__), CWEB_DEFER_CAT(cweb_defer_var_, __COUNTER__))
#endif
