/*
 * cweb_sqldb.c - ctx->database: c-web-modules' struct sqldb over the
 * module's own SQLite file, <module_dir>/module.db.
 *
 * The runtime gives every module name a private directory (kept across its
 * versions, never shown to another module) and names it before onload
 * through cweb_abi_module_dir. One file per module rather than one for the
 * server: a module that holds a lock on its database (BEGIN EXCLUSIVE and
 * never COMMIT), fills it, or corrupts it harms only itself. The connection
 * lives here, in the worker, because struct sqldb hands modules the real
 * sqlite3 * and sqlite3_stmt *.
 */
#define _GNU_SOURCE
#include "cweb.h"
#include "cweb_internal.h"

#include <time.h>
#include <unistd.h>

#define DB_FILE "module.db"
#define DB_BUSY_TIMEOUT_MS 5000

static char g_module_dir[4096];

static void db_log(const char *what, const char *detail)
{
    fprintf(stderr, "cweb: database: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
}

static int db_exec(struct sqldb *db, const char *sql, int (*cb)(void *, int, char **, char **), void *arg)
{
    if (!db)
        return SQLITE_MISUSE;
    if (!db->db)
        return SQLITE_CANTOPEN;
    char *err = NULL;
    int rc = sqlite3_exec(db->db, sql, cb, arg, &err);
    if (rc != SQLITE_OK && rc != SQLITE_ABORT)
        db_log(err ? err : sqlite3_errstr(rc), NULL);
    sqlite3_free(err);
    return rc;
}

static int db_prepare(struct sqldb *db, const char *sql, int n, sqlite3_stmt **stmt, const char **tail)
{
    if (!db || !db->db) {
        if (stmt)
            *stmt = NULL;
        return SQLITE_MISUSE;
    }
    return sqlite3_prepare_v2(db->db, sql, n, stmt, tail);
}

static const char *db_column_text(sqlite3_stmt *stmt, int i)
{
    return (const char *)sqlite3_column_text(stmt, i);
}

static int db_changes(struct sqldb *db)
{
    return db && db->db ? sqlite3_changes(db->db) : 0;
}

static int db_last_insert_rowid(struct sqldb *db)
{
    return db && db->db ? (int)sqlite3_last_insert_rowid(db->db) : 0;
}

/* One list of the operations, for the context's handle and for sqldb_init(). */
#define SQLDB_OPS \
    .exec = db_exec, .prepare = db_prepare, .step = sqlite3_step, .finalize = sqlite3_finalize, \
    .bind_text = sqlite3_bind_text, .bind_int = sqlite3_bind_int, .column_text = db_column_text, \
    .column_int = sqlite3_column_int, .column_count = sqlite3_column_count, .reset = sqlite3_reset, \
    .changes = db_changes, .last_insert_rowid = db_last_insert_rowid, .free = sqlite3_free

static void bind_ops(struct sqldb *db)
{
    *db = (struct sqldb){.db = db->db, SQLDB_OPS};
}

struct sqldb cweb_g_sqldb = {.db = NULL, SQLDB_OPS};

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Busy handler: the default sleeps in steps of up to 100 ms, which leaves
 * the database idle while two versions of the module (old and new during a
 * hot swap) take turns. This one retries after 50 us, backing off to 1 ms,
 * for DB_BUSY_TIMEOUT_MS in all. */
static __thread uint64_t t_busy_since;

static int db_busy(void *arg, int count)
{
    (void)arg;
    uint64_t now = mono_ns();
    if (count == 0)
        t_busy_since = now;
    if (now - t_busy_since >= (uint64_t)DB_BUSY_TIMEOUT_MS * 1000000ull)
        return 0;
    usleep(count < 20 ? 50 : count < 200 ? 200 : 1000);
    return 1;
}

static sqlite3 *open_file(const char *path)
{
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, NULL);
    if (rc != SQLITE_OK) {
        db_log("cannot open the module database", db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_close(db);
        return NULL;
    }
    /* The busy handler first, so that switching to WAL waits its turn too. */
    sqlite3_busy_handler(db, db_busy, NULL);
    char *err = NULL;
    if (sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;", NULL, NULL, &err) != SQLITE_OK)
        db_log(err ? err : "cannot enable WAL", NULL);
    sqlite3_free(err);
    return db;
}

/* Relative names are inside the module's directory; "" when it is unknown. */
static int module_path(char *out, size_t cap, const char *name)
{
    if (name[0] == '/')
        return snprintf(out, cap, "%s", name) < (int)cap ? 0 : -1;
    if (!g_module_dir[0])
        return -1;
    int n = snprintf(out, cap, "%s/%s", g_module_dir, name);
    return n > 0 && (size_t)n < cap ? 0 : -1;
}

int sqldb_init(struct sqldb *db, const char *filename)
{
    char path[4200];
    if (!db || !filename || module_path(path, sizeof(path), filename) != 0)
        return -1;
    db->db = open_file(path);
    bind_ops(db);
    return db->db ? 0 : -1;
}

void sqldb_shutdown(struct sqldb *db)
{
    if (!db || !db->db)
        return;
    sqlite3_close_v2(db->db);
    db->db = NULL;
}

/* Called by the runtime (runtime/worker.py) before onload. */
__attribute__((visibility("default"))) int cweb_abi_module_dir(const char *dir)
{
    if (!dir || !dir[0] || strlen(dir) >= sizeof(g_module_dir))
        return -1;
    snprintf(g_module_dir, sizeof(g_module_dir), "%s", dir);
    if (cweb_g_sqldb.db)
        return 0;
    return sqldb_init(&cweb_g_sqldb, DB_FILE);
}
