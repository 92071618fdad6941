/*
 * engine.h - c-web-modules' <engine.h>, for modules that include it by name.
 * The original's crash guard around handlers. cweb isolates a module in its own worker process instead.
 * Its functions are declared so that a call fails to compile with the
 * reason, not with a linker error; its types are not provided.
 */
#ifndef CWEB_COMPAT_ENGINE_H
#define CWEB_COMPAT_ENGINE_H
#include "cweb.h"

int engine_init() CWEB_UNAVAILABLE("engine_init: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int engine_shutdown() CWEB_UNAVAILABLE("engine_shutdown: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int block_signals_in_thread() CWEB_UNAVAILABLE("block_signals_in_thread: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int setup_thread_signals() CWEB_UNAVAILABLE("setup_thread_signals: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int safe_execute_handler() CWEB_UNAVAILABLE("safe_execute_handler: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int safe_execute_module_hook() CWEB_UNAVAILABLE("safe_execute_module_hook: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int safe_execute_job_run() CWEB_UNAVAILABLE("safe_execute_job_run: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int safe_execute_job_cancel() CWEB_UNAVAILABLE("safe_execute_job_cancel: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int safe_execute_ws_on_open() CWEB_UNAVAILABLE("safe_execute_ws_on_open: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int safe_execute_ws_on_message() CWEB_UNAVAILABLE("safe_execute_ws_on_message: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int safe_execute_ws_on_close() CWEB_UNAVAILABLE("safe_execute_ws_on_close: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");

#endif
