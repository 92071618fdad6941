/*
 * active_conn.h - c-web-modules' <active_conn.h>, for modules that include it by name.
 * The original's list of open client sockets.
 * Its functions are declared so that a call fails to compile with the
 * reason, not with a linker error; its types are not provided.
 */
#ifndef CWEB_COMPAT_ACTIVE_CONN_H
#define CWEB_COMPAT_ACTIVE_CONN_H
#include "cweb.h"

int active_conn_init() CWEB_UNAVAILABLE("active_conn_init: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int active_conn_shutdown() CWEB_UNAVAILABLE("active_conn_shutdown: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int active_conn_add() CWEB_UNAVAILABLE("active_conn_add: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int active_conn_remove() CWEB_UNAVAILABLE("active_conn_remove: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int active_conn_close_all() CWEB_UNAVAILABLE("active_conn_close_all: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");

#endif
