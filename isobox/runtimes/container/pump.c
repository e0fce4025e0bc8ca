/*
 * isobox-pump: the steady-state half of a container monitor, in C.
 *
 * A monitor is a Python process forked from isobox's zygote.  It sets the container up and
 * pumps its stdio; if the workload is still running after a short while, it exec()s this
 * program, which keeps the same pid (so the workload stays its child) and the same fds, and
 * does the rest: stdio -> CRI log + attached clients, client frames -> stdin/resize/signals,
 * and at the end the exit file, the EXIT frame, EOF on the status pipe and cgroup removal.
 * A Python process costs ~2.3 MiB of private memory for this (copy-on-write pages dirtied by
 * reference counting); this costs ~0.2 MiB, which is what 200 idle containers need.
 *
 * The formats are those of isobox/logs.py (CRI log lines) and isobox/attach.py (Docker's
 * 8-byte multiplexed-stream header, plus isobox's control frames).  Arguments (all fds are
 * inherited and already open):
 *
 *   --child PID --out FD:STREAM... [--stdin FD] [--pty FD] [--listener FD] [--client FD...]
 *   --log FD --status FD --exit-file PATH [--oom-file PATH] [--rmdir DIR...] [--unlink PATH]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

enum frame { F_STDIN = 0, F_STDOUT = 1, F_STDERR = 2, F_EXIT = 3, F_ERROR = 4, F_RESIZE = 5,
             F_SIGNAL = 6, F_STDIN_EOF = 7 };

#define MAX_FDS 64
#define MAX_FRAME (1 << 20)
#define DRAIN_SECONDS 2

struct client { int fd; char *buf; size_t len; };

static int child_pid = -1, pidfd = -1, stdin_fd = -1, pty_fd = -1, listener = -1;
static int log_fd = -1, status_fd = -1, epfd = -1, open_outputs = 0;
static int out_stream[MAX_FDS]; /* fd -> stream (1/2), 0 when not an output */
static struct client clients[MAX_FDS];
static int nclients = 0;

static void die(const char *what) { perror(what); exit(1); }

static void write_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) { if (errno == EINTR) continue; return; }
        buf += n; len -= (size_t)n;
    }
}

static int send_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n < 0) { if (errno == EINTR) continue; return -1; }
        buf += n; len -= (size_t)n;
    }
    return 0;
}

static void watch(int fd) {
    struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
}

static void unwatch(int fd) { epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL); }

static void drop_client(int i) {
    unwatch(clients[i].fd);
    close(clients[i].fd);
    free(clients[i].buf);
    clients[i] = clients[--nclients];
}

static void add_client(int fd) {
    if (nclients >= MAX_FDS) { close(fd); return; }
    clients[nclients++] = (struct client){ .fd = fd, .buf = NULL, .len = 0 };
    watch(fd);
}

static void broadcast(enum frame kind, const char *data, size_t len) {
    unsigned char header[8] = { (unsigned char)kind, 0, 0, 0, (unsigned char)(len >> 24),
                                (unsigned char)(len >> 16), (unsigned char)(len >> 8), (unsigned char)len };
    for (int i = nclients - 1; i >= 0; i--)
        if (send_all(clients[i].fd, (const char *)header, 8) < 0 || send_all(clients[i].fd, data, len) < 0)
            drop_client(i);
}

/* One CRI log line per line of the chunk: "<RFC3339Nano> <stdout|stderr> <F|P> <text>\n". */
static void log_chunk(int stream, const char *data, size_t len) {
    struct timespec ts;
    struct tm tm;
    char prefix[64];
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t plen = strftime(prefix, sizeof prefix, "%Y-%m-%dT%H:%M:%S", &tm);
    plen += (size_t)snprintf(prefix + plen, sizeof prefix - plen, ".%09ldZ %s ", ts.tv_nsec,
                             stream == 1 ? "stdout" : "stderr");
    size_t start = 0;
    while (start < len) {
        const char *nl = memchr(data + start, '\n', len - start);
        size_t end = nl ? (size_t)(nl - data) : len;
        size_t cap = plen + 3 + (end - start) + 1;
        char *line = malloc(cap);
        if (!line) return;
        memcpy(line, prefix, plen);
        memcpy(line + plen, nl ? "F " : "P ", 2);
        memcpy(line + plen + 2, data + start, end - start);
        line[plen + 2 + (end - start)] = '\n';
        write_all(log_fd, line, plen + 3 + (end - start));
        free(line);
        start = end + 1;
    }
}

static void on_output(int fd) {
    char buf[65536];
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
    if (n <= 0) { /* EOF, or EIO once a pty's other side is gone */
        unwatch(fd);
        close(fd);
        out_stream[fd] = 0;
        open_outputs--;
        return;
    }
    log_chunk(out_stream[fd], buf, (size_t)n);
    broadcast(out_stream[fd] == 1 ? F_STDOUT : F_STDERR, buf, (size_t)n);
}

static long json_int(const char *json, size_t len, const char *key) {
    char pattern[32];
    snprintf(pattern, sizeof pattern, "\"%s\"", key);
    const char *p = memmem(json, len, pattern, strlen(pattern));
    if (!p) return -1;
    p += strlen(pattern);
    while (p < json + len && (*p == ' ' || *p == ':')) p++;
    return strtol(p, NULL, 10);
}

static void on_frame(int kind, const char *payload, size_t len) {
    if (kind == F_STDIN && stdin_fd >= 0) {
        write_all(stdin_fd, payload, len);
    } else if (kind == F_STDIN_EOF && stdin_fd >= 0) {
        if (stdin_fd == pty_fd) write_all(pty_fd, "\x04", 1); /* a tty has no EOF: ^D */
        else { close(stdin_fd); stdin_fd = -1; }
    } else if (kind == F_RESIZE && pty_fd >= 0) {
        char copy[128];
        size_t n = len < sizeof copy - 1 ? len : sizeof copy - 1;
        memcpy(copy, payload, n);
        copy[n] = 0;
        long rows = json_int(copy, n, "rows"), cols = json_int(copy, n, "cols");
        if (rows > 0 && cols > 0) {
            struct winsize ws = { .ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols };
            ioctl(pty_fd, TIOCSWINSZ, &ws);
        }
    } else if (kind == F_SIGNAL) {
        char copy[16];
        size_t n = len < sizeof copy - 1 ? len : sizeof copy - 1;
        memcpy(copy, payload, n);
        copy[n] = 0;
        int sig = atoi(copy);
        if (sig > 0 && sig < 65) syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
    }
}

static void on_client(int i) {
    char buf[65536];
    ssize_t n = recv(clients[i].fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) return;
    if (n <= 0) { drop_client(i); return; }
    struct client *c = &clients[i];
    char *grown = realloc(c->buf, c->len + (size_t)n);
    if (!grown) { drop_client(i); return; }
    c->buf = grown;
    memcpy(c->buf + c->len, buf, (size_t)n);
    c->len += (size_t)n;
    size_t off = 0;
    while (c->len - off >= 8) {
        const unsigned char *h = (const unsigned char *)c->buf + off;
        size_t flen = ((size_t)h[4] << 24) | ((size_t)h[5] << 16) | ((size_t)h[6] << 8) | h[7];
        if (h[0] > F_STDIN_EOF || flen > MAX_FRAME) { drop_client(i); return; }
        if (c->len - off < 8 + flen) break;
        on_frame(h[0], c->buf + off + 8, flen);
        off += 8 + flen;
    }
    memmove(c->buf, c->buf + off, c->len - off);
    c->len -= off;
}

static int oom_killed(const char *path) {
    if (!path) return 0;
    FILE *f = fopen(path, "re");
    if (!f) return 0;
    char line[256];
    long kills = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "oom_kill %ld", &kills) == 1) break;
    fclose(f);
    return kills > 0;
}

static void json_string(char *out, size_t cap, const char *s) {
    size_t o = 0;
    out[o++] = '"';
    for (; *s && o + 8 < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') { out[o++] = '\\'; out[o++] = (char)ch; }
        else if (ch < 0x20) o += (size_t)snprintf(out + o, cap - o, "\\u%04x", ch);
        else out[o++] = (char)ch;
    }
    out[o++] = '"';
    out[o] = 0;
}

static void remove_dir(const char *dir) {
    struct timespec pause = { 0, 1000000 };
    for (int tries = 0; tries < 2000; tries++) { /* EBUSY while the last tasks leave: ~2 s */
        if (rmdir(dir) == 0 || errno == ENOENT) return;
        if (errno != EBUSY) return;
        nanosleep(&pause, NULL);
    }
}

int main(int argc, char **argv) {
    const char *exit_file = NULL, *oom_file = NULL, *unlink_path = NULL, *error = NULL;
    const char *rmdirs[16];
    int nrmdirs = 0, forced_code = -1;
    signal(SIGPIPE, SIG_IGN);
    if ((epfd = epoll_create1(EPOLL_CLOEXEC)) < 0) die("epoll_create1");
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *flag = argv[i], *val = argv[i + 1];
        if (!strcmp(flag, "--child")) child_pid = atoi(val);
        else if (!strcmp(flag, "--out")) {
            int fd = atoi(val), stream = atoi(strchr(val, ':') ? strchr(val, ':') + 1 : "1");
            if (fd < 0 || fd >= MAX_FDS) die("--out");
            out_stream[fd] = stream;
            open_outputs++;
            watch(fd);
        }
        else if (!strcmp(flag, "--stdin")) stdin_fd = atoi(val);
        else if (!strcmp(flag, "--pty")) pty_fd = atoi(val);
        else if (!strcmp(flag, "--listener")) { listener = atoi(val); watch(listener); }
        else if (!strcmp(flag, "--client")) add_client(atoi(val));
        else if (!strcmp(flag, "--log")) log_fd = atoi(val);
        else if (!strcmp(flag, "--status")) status_fd = atoi(val);
        else if (!strcmp(flag, "--exit-file")) exit_file = val;
        else if (!strcmp(flag, "--oom-file")) oom_file = val;
        else if (!strcmp(flag, "--rmdir") && nrmdirs < 16) rmdirs[nrmdirs++] = val;
        else if (!strcmp(flag, "--unlink")) unlink_path = val;
        else if (!strcmp(flag, "--exit-code")) forced_code = atoi(val);
        else if (!strcmp(flag, "--error")) error = val;
        else { fprintf(stderr, "isobox-pump: unknown flag %s\n", flag); return 2; }
    }
    if (child_pid <= 0 || !exit_file || status_fd < 0) { fprintf(stderr, "isobox-pump: bad arguments\n"); return 2; }
    if ((pidfd = (int)syscall(SYS_pidfd_open, child_pid, 0)) < 0) die("pidfd_open");
    watch(pidfd);

    int status = 0, exited = 0;
    struct timespec deadline = { 0, 0 }, now;
    while (!exited || open_outputs > 0) {
        int timeout = -1;
        if (exited) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            long ms = (deadline.tv_sec - now.tv_sec) * 1000 + (deadline.tv_nsec - now.tv_nsec) / 1000000;
            if (ms <= 0) break;
            timeout = (int)ms;
        }
        struct epoll_event events[16];
        int n = epoll_wait(epfd, events, 16, timeout);
        if (n < 0) { if (errno == EINTR) continue; die("epoll_wait"); }
        for (int e = 0; e < n; e++) {
            int fd = events[e].data.fd;
            if (fd == pidfd && !exited) {
                if (waitpid(child_pid, &status, 0) < 0) die("waitpid");
                exited = 1;
                unwatch(pidfd);
                clock_gettime(CLOCK_MONOTONIC, &deadline);
                deadline.tv_sec += DRAIN_SECONDS; /* the PID namespace died with its init */
            } else if (fd == listener) {
                int conn = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
                if (conn >= 0) add_client(conn);
            } else if (fd < MAX_FDS && out_stream[fd]) {
                on_output(fd);
            } else {
                for (int i = 0; i < nclients; i++)
                    if (clients[i].fd == fd) { on_client(i); break; }
            }
        }
    }

    int code = WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
    if (forced_code >= 0) code = forced_code;
    int oom = code == 137 && oom_killed(oom_file);
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    char err_json[1024], doc[1400], tmp[4096];
    if (error) json_string(err_json, sizeof err_json, error);
    else strcpy(err_json, "null");
    int dlen = snprintf(doc, sizeof doc, "{\"exit_code\": %d, \"oom_killed\": %s, \"error\": %s, \"finished_at\": %ld.%06ld}",
                        code, oom ? "true" : "false", err_json, (long)wall.tv_sec, wall.tv_nsec / 1000);
    snprintf(tmp, sizeof tmp, "%s.tmp", exit_file);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd >= 0) {
        write_all(fd, doc, (size_t)dlen);
        close(fd);
        rename(tmp, exit_file); /* the run root is volatile: rename alone is the guarantee */
    }
    broadcast(F_EXIT, doc, (size_t)dlen);
    for (int i = nclients - 1; i >= 0; i--) { shutdown(clients[i].fd, SHUT_WR); drop_client(i); }
    close(status_fd); /* EOF: the daemon answers `wait` now */
    for (int i = 0; i < nrmdirs; i++) remove_dir(rmdirs[i]);
    if (unlink_path) unlink(unlink_path);
    return 0;
}
