/*
 * libevent.h - c-web-modules' <libevent.h>, for modules that include it by name.
 * The original's event loop.
 * Its functions are declared so that a call fails to compile with the
 * reason, not with a linker error; its types are not provided.
 */
#ifndef CWEB_COMPAT_LIBEVENT_H
#define CWEB_COMPAT_LIBEVENT_H
#include "cweb.h"

int event_new() CWEB_UNAVAILABLE("event_new: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int event_free() CWEB_UNAVAILABLE("event_free: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int event_add() CWEB_UNAVAILABLE("event_add: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int event_del() CWEB_UNAVAILABLE("event_del: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int event_dispatch() CWEB_UNAVAILABLE("event_dispatch: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int event_dispatch_stop() CWEB_UNAVAILABLE("event_dispatch_stop: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");

#endif
