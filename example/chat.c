/*
 * chat.c - a chat room over WebSockets.
 *
 *   GET /chat      the page: a log, an input and a send button
 *   WS  /chat/ws   every message is broadcast to everyone in the room
 *
 * The room is a mutex-protected array of the connected sockets. Joins,
 * messages and leaves are announced to every member as "user N ...", where
 * N is the connection's ws->id.
 */
#include <cweb.h>

#define MAX_CLIENTS 1024

static websocket_t *clients[MAX_CLIENTS];
static size_t client_count;
static pthread_mutex_t clients_lock = PTHREAD_MUTEX_INITIALIZER;

/* The socket URL is built from location, so the page works behind any
 * host, port or TLS terminator. Messages are shown with textContent, never
 * parsed as HTML. */
static const char chat_page[] =
    "<!doctype html>\n"
    "<html>\n"
    "<head>\n"
    "<meta charset=\"utf-8\">\n"
    "<title>cweb chat</title>\n"
    "<style>\n"
    "body { font-family: sans-serif; max-width: 40em; margin: 2em auto; }\n"
    "#log { border: 1px solid #ccc; height: 20em; overflow-y: auto; padding: .5em; }\n"
    "#msg { width: 30em; }\n"
    "</style>\n"
    "</head>\n"
    "<body>\n"
    "<h1>Chat</h1>\n"
    "<p id=\"status\">connecting...</p>\n"
    "<div id=\"log\"></div>\n"
    "<p><input id=\"msg\" autocomplete=\"off\" placeholder=\"Say something\">\n"
    "<button id=\"send\">Send</button></p>\n"
    "<script>\n"
    "const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';\n"
    "const sock = new WebSocket(scheme + '//' + location.host + '/chat/ws');\n"
    "const log = document.getElementById('log');\n"
    "const msg = document.getElementById('msg');\n"
    "const status = document.getElementById('status');\n"
    "function show(text) {\n"
    "  const line = document.createElement('div');\n"
    "  line.textContent = text;\n"
    "  log.appendChild(line);\n"
    "  log.scrollTop = log.scrollHeight;\n"
    "}\n"
    "function send() {\n"
    "  if (!msg.value || sock.readyState !== WebSocket.OPEN) return;\n"
    "  sock.send(msg.value);\n"
    "  msg.value = '';\n"
    "  msg.focus();\n"
    "}\n"
    "sock.onopen = () => { status.textContent = 'connected'; };\n"
    "sock.onclose = () => { status.textContent = 'disconnected'; };\n"
    "sock.onmessage = (ev) => show(ev.data);\n"
    "document.getElementById('send').addEventListener('click', send);\n"
    "msg.addEventListener('keydown', (ev) => {\n"
    "  if (ev.key === 'Enter') { ev.preventDefault(); send(); }\n"
    "});\n"
    "</script>\n"
    "</body>\n"
    "</html>\n";

/* Sends text to every member. Holding the lock while sending keeps a
 * closing client from being freed mid-send. */
static void broadcast(const char *text, size_t length)
{
    pthread_mutex_lock(&clients_lock);
    for (size_t i = 0; i < client_count; i++)
        clients[i]->send(clients[i], text, length);
    pthread_mutex_unlock(&clients_lock);
}

static void announce(websocket_t *ws, const char *what)
{
    char line[64];
    int n = snprintf(line, sizeof(line), "user %llu %s", (unsigned long long)ws->id, what);
    if (n > 0)
        broadcast(line, strlen(line));
}

static int chat_index(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    (void)ctx;
    (void)req;
    _Static_assert(sizeof(chat_page) <= HTTP_RESPONSE_SIZE, "chat page must fit the body buffer");
    memcpy(res->body, chat_page, sizeof(chat_page));
    http_kv_insert(res->headers, "Content-Type", strdup("text/html; charset=utf-8"));
    res->status = HTTP_200_OK;
    return 0;
}

static void chat_open(struct cweb_context *ctx, websocket_t *ws)
{
    (void)ctx;
    pthread_mutex_lock(&clients_lock);
    int full = client_count == MAX_CLIENTS;
    if (!full)
        clients[client_count++] = ws;
    pthread_mutex_unlock(&clients_lock);

    if (full) {
        static const char sorry[] = "the room is full, try again later";
        ws->send(ws, sorry, strlen(sorry));
        ws->close(ws);
        return;
    }
    announce(ws, "joined");
}

static void chat_message(struct cweb_context *ctx, websocket_t *ws, const char *message, size_t length)
{
    (void)ctx;
    /* message is length-delimited and may not be NUL-terminated. */
    char prefix[48];
    int plen = snprintf(prefix, sizeof(prefix), "user %llu: ", (unsigned long long)ws->id);
    if (plen < 0)
        return;
    char *line = malloc((size_t)plen + length + 1);
    if (!line)
        return;
    memcpy(line, prefix, (size_t)plen);
    memcpy(line + plen, message, length);
    line[plen + length] = '\0';
    broadcast(line, (size_t)plen + length);
    free(line);
}

static void chat_close(struct cweb_context *ctx, websocket_t *ws)
{
    (void)ctx;
    int found = 0;
    pthread_mutex_lock(&clients_lock);
    for (size_t i = 0; i < client_count; i++) {
        if (clients[i] == ws) {
            /* Order does not matter: move the last one into the hole. */
            clients[i] = clients[--client_count];
            found = 1;
            break;
        }
    }
    pthread_mutex_unlock(&clients_lock);

    /* A client turned away by chat_open never joined, so it does not leave. */
    if (found)
        announce(ws, "left");
}

export module_t config = {
    .name = "chat",
    .author = "cweb",
    .routes = {
        {"/chat", "GET", chat_index, NONE},
    },
    .size = 1,
    .websockets = {
        {"/chat/ws", chat_open, chat_message, chat_close},
    },
    .ws_size = 1,
};
