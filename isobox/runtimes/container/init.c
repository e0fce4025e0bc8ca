/*
 * isobox-init: PID 1 of a container run with --init (Docker's docker-init, i.e. tini).
 *
 *   isobox-init --sync-fd FD -- CMD [ARG...]
 *
 * Started by the container's set-up process with the workload's identity, capabilities,
 * seccomp filter, environment and working directory already in place, from a sealed memfd
 * (launch.py), so /proc/1/exe inside the container is neither a host path nor writable.
 * It forks CMD, forwards the signals Docker's init forwards, reaps every process that ends
 * up as its child, and exits with CMD's exit code (128 + the signal that killed it).
 *
 * FD is the monitor's sync socket: if CMD cannot be executed, the child writes Docker's error
 * message there as {"exec_error": "...", "code": 126|127}; a successful exec closes it
 * (close-on-exec), which the monitor reads as "started".  Static: the image has no libc.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static const int forwarded[] = { SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH };
#define NFORWARDED (sizeof forwarded / sizeof forwarded[0])

/* A PID 1 only receives signals from its own namespace that it has a handler for; the
 * handler never runs, as the signals stay blocked and are taken with sigwaitinfo. */
static void unused(int sig) { (void)sig; }

/* Append s to out as the body of a JSON string (quotes, backslashes, control characters). */
static size_t json_escape(char *out, size_t size, size_t at, const char *s) {
    for (; *s && at + 7 < size; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') { out[at++] = '\\'; out[at++] = (char)c; }
        else if (c < 0x20) at += (size_t)snprintf(out + at, size - at, "\\u%04x", c);
        else out[at++] = (char)c;
    }
    out[at] = 0;
    return at;
}

/* In the child, after a failed exec: Docker's message and exit code (as process.py's). */
static void __attribute__((noreturn)) report_exec_error(int sync_fd, const char *cmd, int err) {
    int code = err == ENOENT ? 127 : 126;
    char what[256], msg[1024];
    if (err == ENOENT) snprintf(what, sizeof what, "executable file not found%s", strchr(cmd, '/') ? "" : " in $PATH");
    else if (err == EACCES) snprintf(what, sizeof what, "permission denied");
    else snprintf(what, sizeof what, "%s", strerror(err));
    size_t at = (size_t)snprintf(msg, sizeof msg, "{\"exec_error\": \"exec: \\\"");
    at = json_escape(msg, sizeof msg - 64, at, cmd);
    at += (size_t)snprintf(msg + at, sizeof msg - at, "\\\": ");
    at = json_escape(msg, sizeof msg - 32, at, what);
    at += (size_t)snprintf(msg + at, sizeof msg - at, "\", \"code\": %d}", code);
    if (sync_fd >= 0) (void)!write(sync_fd, msg, at);
    _exit(code);
}

int main(int argc, char **argv) {
    int sync_fd = -1, first = 1;
    if (argc > 2 && strcmp(argv[1], "--sync-fd") == 0) {
        sync_fd = atoi(argv[2]);
        first = 3;
    }
    if (first >= argc || strcmp(argv[first], "--") != 0 || first + 1 >= argc) {
        fprintf(stderr, "usage: isobox-init [--sync-fd FD] -- CMD [ARG...]\n");
        return 125;
    }
    char **cmd = argv + first + 1;
    prctl(PR_SET_NAME, "isobox-init"); /* not "memfd:isobox-i", the name of what was exec'd */

    sigset_t waited, none;
    sigemptyset(&waited);
    sigemptyset(&none);
    sigaddset(&waited, SIGCHLD);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = unused;
    for (size_t i = 0; i < NFORWARDED; i++) {
        sigaddset(&waited, forwarded[i]);
        sigaction(forwarded[i], &sa, NULL);
    }
    sigprocmask(SIG_BLOCK, &waited, NULL);

    pid_t child = fork();
    if (child < 0) {
        perror("isobox-init: fork");
        return 125;
    }
    if (child == 0) {
        sigprocmask(SIG_SETMASK, &none, NULL); /* exec resets the handlers, not the mask */
        if (sync_fd >= 0) fcntl(sync_fd, F_SETFD, FD_CLOEXEC);
        execvp(cmd[0], cmd);
        report_exec_error(sync_fd, cmd[0], errno);
    }
    if (sync_fd >= 0) close(sync_fd); /* the monitor reads EOF once the child's exec closes its copy */

    for (;;) {
        siginfo_t info;
        if (sigwaitinfo(&waited, &info) < 0) continue; /* EINTR */
        if (info.si_signo != SIGCHLD) {
            kill(child, info.si_signo);
            continue;
        }
        for (;;) { /* one SIGCHLD may stand for several exits */
            int status;
            pid_t done = waitpid(-1, &status, WNOHANG);
            if (done <= 0) break;
            if (done == child) return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
        }
    }
}
