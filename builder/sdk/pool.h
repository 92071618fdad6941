/*
 * pool.h - c-web-modules' <pool.h>, for modules that include it by name.
 * The original's connection thread pool.
 * Its functions are declared so that a call fails to compile with the
 * reason, not with a linker error; its types are not provided.
 */
#ifndef CWEB_COMPAT_POOL_H
#define CWEB_COMPAT_POOL_H
#include "cweb.h"

int thread_pool_init() CWEB_UNAVAILABLE("thread_pool_init: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int thread_pool_add_task() CWEB_UNAVAILABLE("thread_pool_add_task: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int thread_pool_request_stop() CWEB_UNAVAILABLE("thread_pool_request_stop: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int thread_pool_pending_count() CWEB_UNAVAILABLE("thread_pool_pending_count: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int thread_pool_cancel_all() CWEB_UNAVAILABLE("thread_pool_cancel_all: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int thread_pool_destroy() CWEB_UNAVAILABLE("thread_pool_destroy: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int thread_pool_is_full() CWEB_UNAVAILABLE("thread_pool_is_full: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");

#endif
