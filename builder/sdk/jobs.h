/*
 * jobs.h - c-web-modules' <jobs.h>, for modules that include it by name.
 * The original's job system. What a module uses (job_info_t, job_ctx_t, jobs_create) is in cweb.h.
 * Its functions are declared so that a call fails to compile with the
 * reason, not with a linker error; its other types are not provided.
 */
#ifndef CWEB_COMPAT_JOBS_H
#define CWEB_COMPAT_JOBS_H
#include "cweb.h"

/* ctx->jobs' type: opaque in cweb (the job system is the server's). */
typedef struct job_system job_system_t;

int jobs_init() CWEB_UNAVAILABLE("jobs_init: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int jobs_shutdown() CWEB_UNAVAILABLE("jobs_shutdown: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int jobs_handle_http() CWEB_UNAVAILABLE("jobs_handle_http: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int jobs_ws_info() CWEB_UNAVAILABLE("jobs_ws_info: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int jobs_register_module() CWEB_UNAVAILABLE("jobs_register_module: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int jobs_unregister_module() CWEB_UNAVAILABLE("jobs_unregister_module: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int jobs_create_impl() CWEB_UNAVAILABLE("jobs_create_impl: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");

#endif
