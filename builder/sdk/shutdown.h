/*
 * shutdown.h - c-web-modules' <shutdown.h>, for modules that include it by name.
 * The original's shutdown sequence.
 * Its functions are declared so that a call fails to compile with the
 * reason, not with a linker error; its types are not provided.
 */
#ifndef CWEB_COMPAT_SHUTDOWN_H
#define CWEB_COMPAT_SHUTDOWN_H
#include "cweb.h"

int shutdown_run() CWEB_UNAVAILABLE("shutdown_run: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");

#endif
