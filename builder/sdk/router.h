/*
 * router.h - c-web-modules' <router.h>, for modules that include it by name.
 * The original's router. Route matching is the cweb server's.
 * Its functions are declared so that a call fails to compile with the
 * reason, not with a linker error; its other types are not provided.
 */
#ifndef CWEB_COMPAT_ROUTER_H
#define CWEB_COMPAT_ROUTER_H
#include "cweb.h"

/* The original's name for a route handler's type. */
typedef entry_t handler_t;

int router_init() CWEB_UNAVAILABLE("router_init: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int router_shutdown() CWEB_UNAVAILABLE("router_shutdown: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int router_register_module() CWEB_UNAVAILABLE("router_register_module: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int router_find() CWEB_UNAVAILABLE("router_find: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int router_ws_find() CWEB_UNAVAILABLE("router_ws_find: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int router_job_find() CWEB_UNAVAILABLE("router_job_find: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int router_job_release() CWEB_UNAVAILABLE("router_job_release: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int router_gateway_json() CWEB_UNAVAILABLE("router_gateway_json: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int router_resolve() CWEB_UNAVAILABLE("router_resolve: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int router_mgnt_parse_request() CWEB_UNAVAILABLE("router_mgnt_parse_request: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");

#endif
