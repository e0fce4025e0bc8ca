/* isobox-run: the guest-side exec of a workload (static, in the isobox initramfs).
 *
 *   isobox-run [--relay PORT [--stdin] | --pty PORT] [--sync] ROOT UID GID GROUPS WORKDIR NENV K=V... -- PROG ARGS...
 *
 * chroot into ROOT, create and enter WORKDIR (Docker creates a missing one), drop to UID/GID
 * with the supplementary GROUPS ("-" for none, else comma-separated), replace the environment,
 * and execvp PROG with the workload's PATH.  Exit codes follow Docker: 127 when PROG is not
 * found, 126 when it cannot be run or the working directory cannot be entered.
 * busybox has no numeric setuid applet, so this small helper is compiled once by the host.
 * Run as /init (PID 1) it is the guest init's first stage instead (guestboot.c);
 * `isobox-run --nice N PATH ARGS...` is the init's `nice` (exec PATH at niceness N).
 *
 * With --relay PORT or --pty PORT this process stays outside PROG as the relay between PROG's
 * stdio and the virtio-serial port named PORT, in isobox's attach framing (8-byte header: type,
 * 3 zero bytes, big-endian length; see relay.py):
 *     host -> guest  STDIN(0) bytes, RESIZE(5) "ROWS COLS", SIGNAL(6) "N", STDIN_EOF(7)
 *     guest -> host  READY(8) our pid (first), STDOUT(1)/STDERR(2) bytes, EXIT(3) "CODE" (last)
 * --relay: PROG's stdout and stderr are pipes (two streams); its stdin is a pipe fed by STDIN
 * frames with --stdin, else /dev/null.  One port carries what five did: each virtio-serial port
 * costs the guest ~90 ms of boot under TCG.
 * --pty: PROG gets a terminal (run -t, exec -t): a pty of the devpts instance mounted in ROOT
 * (so `tty` says /dev/pts/N inside), PROG as the session leader with the pty as its controlling
 * terminal; one output stream.
 * The relay exits with PROG's code (128+N for a signal); with --sync it first flushes the guest's
 * disks, so that the host may end the VM the moment EXIT arrives.  EOF on the port means the host
 * went away: PROG is hung up (SIGHUP to the session), as sshd does when its client disconnects.
 * Either way PROG starts with default signal dispositions and an empty signal mask.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

enum { F_STDIN = 0, F_STDOUT = 1, F_STDERR = 2, F_EXIT = 3, F_RESIZE = 5, F_SIGNAL = 6, F_STDIN_EOF = 7, F_READY = 8 };
#define CHUNK 16384
#define PENDING_MAX 65536 /* input waiting for the pty; the port is not read while it is full */
#define READY_PATIENCE_MS 10000 /* for the host end to connect (it does before it starts us) */

static void mkdirs(char *path) {
    for (char *p = path + 1; *p; p++) {
        if (*p == '/') { *p = 0; mkdir(path, 0755); *p = '/'; }
    }
    mkdir(path, 0755);
}

/* Become the workload: working directory, identity, environment, exec.  Returns only on error. */
static int become(char **argv, int nenv) {
    /* Default signal dispositions, as a container's process starts with: the init starts us with
     * `&`, and a non-interactive shell's background commands ignore SIGINT and SIGQUIT (which a
     * workload's own shell would then keep ignoring, so that Ctrl-C would not reach its jobs). */
    for (int sig = 1; sig < NSIG; sig++) {
        if (sig != SIGKILL && sig != SIGSTOP) signal(sig, SIG_DFL);
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    /* The init runs qemu-ga at nice 19 so that its start-up never slows a workload's; what it
     * starts for `exec` runs at the normal priority. */
    setpriority(PRIO_PROCESS, 0, 0);
    char *wd = strdup(argv[5]);
    mkdirs(wd);
    gid_t groups[64];
    int ngroups = 0;
    if (strcmp(argv[4], "-") != 0) {
        for (char *tok = strtok(argv[4], ","); tok && ngroups < 64; tok = strtok(NULL, ","))
            groups[ngroups++] = (gid_t)strtoul(tok, NULL, 10);
    }
    if (setgroups(ngroups, groups) < 0 || setgid((gid_t)strtoul(argv[3], NULL, 10)) < 0
        || setuid((uid_t)strtoul(argv[2], NULL, 10)) < 0) { perror("isobox-run: setuid"); return 125; }
    if (chdir(argv[5]) < 0) {
        fprintf(stderr, "chdir to cwd (\"%s\") set in config: %s\n", argv[5], strerror(errno));
        return 126;
    }
    clearenv();
    for (int i = 0; i < nenv; i++) putenv(argv[7 + i]);
    if (!getenv("PATH")) putenv("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    char **prog = argv + 8 + nenv;
    execvp(prog[0], prog);
    int err = errno;
    fprintf(stderr, "exec: \"%s\": %s\n", prog[0], err == ENOENT ? "executable file not found in $PATH" : strerror(err));
    return err == ENOENT ? 127 : 126;
}

/* -- the pty relay ------------------------------------------------------------------------------ */

/* Waits until the host can take data: a virtio-serial write would block for as long as no
 * host end is connected, so a relay whose host went away would hang on to its port forever.
 * POLLHUP is "no host connected"; ``patience_ms`` tolerates that while the host is on its way. */
static int wait_writable(int fd, int patience_ms) {
    for (;;) {
        struct pollfd p = { fd, POLLOUT, 0 };
        int ready = poll(&p, 1, -1);
        if (ready < 0 && errno == EINTR) continue;
        if (ready < 0) return -1;
        if (p.revents & POLLOUT) return 0;
        if (!(p.revents & POLLHUP) || patience_ms <= 0) return -1;
        usleep(10000);
        patience_ms -= 10;
    }
}

static int write_all(int fd, const unsigned char *buf, size_t len, int patience_ms) {
    while (len) {
        if (wait_writable(fd, patience_ms) < 0) return -1;
        ssize_t n = write(fd, buf, len);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (n <= 0) return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static unsigned char frame_buf[8 + CHUNK];

static int send_frame(int fd, int type, const void *data, size_t len, int patience_ms) {
    frame_buf[0] = (unsigned char)type;
    frame_buf[1] = frame_buf[2] = frame_buf[3] = 0;
    for (int i = 0; i < 4; i++) frame_buf[4 + i] = (unsigned char)(len >> (24 - 8 * i));
    memcpy(frame_buf + 8, data, len);
    return write_all(fd, frame_buf, 8 + len, patience_ms);
}

void read_attr(const char *path, char *out, size_t size); /* guestboot.c */

/* The port by its virtio-serial name (no /dev/port-* link needed): an exec -t session's is
 * hot-plugged just before qemu-ga starts us, and may take a moment to appear. */
static int open_port(const char *name) {
    char path[300], dev[300], got[128];
    /* The init linked the ports QEMU started with (guestboot.c); hot-plugged ones are looked up. */
    snprintf(path, sizeof path, "/dev/port-%s", name);
    int linked = open(path, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (linked >= 0) return linked;
    for (int tries = 0; tries < 1000; tries++) {
        DIR *dir = opendir("/sys/class/virtio-ports");
        struct dirent *e;
        while (dir && (e = readdir(dir))) {
            if (e->d_name[0] == '.') continue;
            snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
            read_attr(path, got, sizeof got);
            if (strcmp(got, name) != 0) continue;
            snprintf(dev, sizeof dev, "/dev/%s", e->d_name);
            int fd = open(dev, O_RDWR | O_NOCTTY | O_CLOEXEC);
            if (fd >= 0) { closedir(dir); return fd; }
            if (errno != EBUSY && errno != ENOENT) { perror("isobox-run: open port"); closedir(dir); return -1; }
        }
        if (dir) closedir(dir);
        usleep(10000);
    }
    fprintf(stderr, "isobox-run: virtio port %s is missing or busy\n", name);
    return -1;
}

struct relay {
    int port, sigfd, is_pty;
    int in_fd;     /* the pty master, or the write end of PROG's stdin pipe; -1: none (or closed) */
    int in_eof;    /* STDIN_EOF came: close in_fd once pending is written (pipes) */
    int out_fd[2]; /* the pty master, or the read ends of PROG's stdout and stderr pipes; -1: closed */
    pid_t child;
    unsigned char pending[PENDING_MAX]; /* input waiting for in_fd */
    size_t npending;
    unsigned char hdr[8]; /* the frame being parsed */
    int nhdr, type;
    uint32_t left;
    char ctl[64]; /* a control frame's payload */
    size_t nctl;
};

static void on_control(struct relay *r) {
    r->ctl[r->nctl] = 0;
    if (r->type == F_RESIZE && r->is_pty) {
        unsigned rows = 0, cols = 0;
        if (sscanf(r->ctl, "%u %u", &rows, &cols) == 2 && rows && cols && rows < 65536 && cols < 65536) {
            struct winsize ws = { .ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols };
            ioctl(r->in_fd, TIOCSWINSZ, &ws); /* the kernel sends SIGWINCH to the foreground */
        }
    } else if (r->type == F_SIGNAL) {
        int sig = atoi(r->ctl);
        if (sig > 0 && sig < NSIG) kill(r->child, sig);
    } else if (r->type == F_STDIN_EOF && r->is_pty && r->npending < PENDING_MAX) {
        r->pending[r->npending++] = 4; /* a tty has no EOF of its own: ^D, as a container's monitor does */
    } else if (r->type == F_STDIN_EOF) {
        r->in_eof = 1;
    }
}

/* Frames from the host; STDIN payloads go to the pending buffer (there is room: see the caller). */
static void on_port_data(struct relay *r, const unsigned char *p, size_t n) {
    while (n) {
        if (r->nhdr < 8) {
            r->hdr[r->nhdr++] = *p++;
            n--;
            if (r->nhdr < 8) continue;
            r->type = r->hdr[0];
            r->left = (uint32_t)r->hdr[4] << 24 | (uint32_t)r->hdr[5] << 16 | (uint32_t)r->hdr[6] << 8 | r->hdr[7];
            r->nctl = 0;
        } else {
            size_t take = n < r->left ? n : r->left;
            if (r->type == F_STDIN) {
                if (r->in_fd >= 0 && !r->in_eof) { /* else PROG has no stdin: dropped */
                    memcpy(r->pending + r->npending, p, take);
                    r->npending += take;
                }
            } else {
                for (size_t i = 0; i < take && r->nctl < sizeof r->ctl - 1; i++) r->ctl[r->nctl++] = (char)p[i];
            }
            p += take;
            n -= take;
            r->left -= (uint32_t)take;
        }
        if (r->nhdr == 8 && r->left == 0) {
            if (r->type != F_STDIN) on_control(r);
            r->nhdr = 0;
        }
    }
}

static int exit_code(int status) {
    return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
}

static void hang_up(struct relay *r, int status) {
    for (int i = 0; i < 2; i++) if (r->out_fd[i] >= 0) close(r->out_fd[i]);
    if (r->in_fd >= 0 && !r->is_pty) close(r->in_fd);
    if (status == -1) kill(r->child, SIGHUP);
}

/* Pump until PROG has exited and its output is drained (all its writers gone, or quiet for
 * 0.2 s: a background job may keep the pty or a pipe open).  Returns PROG's exit code, or -1
 * when the host went away. */
static int pump(struct relay *r) {
    int status = -1;
    unsigned char buf[CHUNK];
    for (;;) {
        if (status != -1 && r->out_fd[0] < 0 && r->out_fd[1] < 0) break;
        if (r->in_eof && !r->npending && r->in_fd >= 0 && !r->is_pty) {
            close(r->in_fd); /* PROG reads EOF */
            r->in_fd = -1;
        }
        struct pollfd fds[5] = {
            { r->port, r->npending + CHUNK <= PENDING_MAX ? POLLIN : 0, 0 },
            { r->out_fd[0], POLLIN, 0 },
            { r->out_fd[1], POLLIN, 0 },
            { r->npending ? r->in_fd : -1, POLLOUT, 0 },
            { r->sigfd, POLLIN, 0 },
        };
        int ready = poll(fds, 5, status == -1 ? -1 : 200);
        if (ready < 0 && errno == EINTR) continue;
        if (ready == 0) break; /* exited and quiet */
        if (fds[4].revents & POLLIN) {
            struct signalfd_siginfo si;
            if (read(r->sigfd, &si, sizeof si) == sizeof si && si.ssi_signo != SIGCHLD)
                kill(r->child, (int)si.ssi_signo); /* forwarded, as the init forwards to a workload */
            int st;
            if (status == -1 && waitpid(r->child, &st, WNOHANG) == r->child) status = st;
        }
        if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            /* No room means we did not ask for input: then this is the host's hang-up. */
            ssize_t n = r->npending + CHUNK <= PENDING_MAX ? read(r->port, buf, CHUNK) : 0;
            if (n > 0) {
                on_port_data(r, buf, (size_t)n);
            } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
                hang_up(r, status);
                return -1;
            }
        }
        if (fds[3].revents & (POLLOUT | POLLERR | POLLHUP)) {
            ssize_t n = write(r->in_fd, r->pending, r->npending);
            if (n > 0) {
                memmove(r->pending, r->pending + n, r->npending - (size_t)n);
                r->npending -= (size_t)n;
            } else if (n < 0 && errno == EPIPE) { /* PROG closed its stdin: drop what it never reads */
                r->npending = 0;
            }
        }
        for (int i = 0; i < 2; i++) {
            if (!(fds[1 + i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            ssize_t n = read(r->out_fd[i], buf, CHUNK);
            if (n > 0) {
                if (send_frame(r->port, i ? F_STDERR : F_STDOUT, buf, (size_t)n, 0) < 0) {
                    hang_up(r, status);
                    return -1;
                }
            } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
                /* EOF, or EIO from a pty: every holder is gone (PROG may still run) */
                if (!r->is_pty) close(r->out_fd[i]);
                r->out_fd[i] = -1;
            }
        }
    }
    return exit_code(status);
}

struct options { const char *port; int is_pty, want_stdin, sync; };

/* PROG's end of the relay in the child: the pty as controlling terminal, or the pipes. */
static void child_stdio(const struct options *o, int slave, int pipes[3][2]) {
    if (o->is_pty) {
        if (setsid() < 0 || ioctl(slave, TIOCSCTTY, 0) < 0) { perror("isobox-run: controlling tty"); _exit(125); }
        dup2(slave, 0);
        dup2(slave, 1);
        dup2(slave, 2);
        if (slave > 2) close(slave);
        return;
    }
    int in = o->want_stdin ? pipes[0][0] : open("/dev/null", O_RDONLY);
    if (in < 0 || dup2(in, 0) < 0 || dup2(pipes[1][1], 1) < 0 || dup2(pipes[2][1], 2) < 0) _exit(125);
}

static int run_relay(const struct options *o, char **argv, int nenv) {
    int port = open_port(o->port);
    if (port < 0) return 125;
    if (chroot(argv[1]) < 0 || chdir("/") < 0) { perror("isobox-run: chroot"); return 125; }
    static struct relay r;
    r.port = port;
    r.is_pty = o->is_pty;
    int slave = -1;
    int pipes[3][2] = { { -1, -1 }, { -1, -1 }, { -1, -1 } };
    if (o->is_pty) {
        /* The devpts instance mounted in the image's root (newinstance): its ptys are the workload's. */
        int master = open("/dev/pts/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
        int unlock = 0;
        if (master < 0 || ioctl(master, TIOCSPTLCK, &unlock) < 0) { perror("isobox-run: /dev/pts/ptmx"); return 125; }
        slave = ioctl(master, TIOCGPTPEER, O_RDWR | O_NOCTTY);
        if (slave < 0) { perror("isobox-run: pty"); return 125; }
        if (fchown(slave, (uid_t)strtoul(argv[2], NULL, 10), (gid_t)strtoul(argv[3], NULL, 10)) < 0) {
            perror("isobox-run: chown pty");
        }
        r.in_fd = master;
        r.out_fd[0] = master;
        r.out_fd[1] = -1;
    } else {
        for (int i = 0; i < 3; i++) {
            if ((i > 0 || o->want_stdin) && pipe2(pipes[i], O_CLOEXEC) < 0) { perror("isobox-run: pipe"); return 125; }
        }
        r.in_fd = pipes[0][1];
        r.out_fd[0] = pipes[1][0];
        r.out_fd[1] = pipes[2][0];
        for (int i = 0; i < 3; i++) {
            int ours = i ? pipes[i][0] : pipes[i][1];
            if (ours >= 0) fcntl(ours, F_SETFL, O_NONBLOCK);
        }
        signal(SIGPIPE, SIG_IGN); /* a closed stdin is EPIPE, not our death (PROG's is reset) */
    }
    sigset_t mask;
    sigemptyset(&mask);
    int forwarded[] = { SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGPWR };
    for (size_t i = 0; i < sizeof forwarded / sizeof *forwarded; i++) sigaddset(&mask, forwarded[i]);
    sigprocmask(SIG_BLOCK, &mask, NULL); /* for the signalfd; PROG gets an empty mask (become) */
    int sigfd = signalfd(-1, &mask, SFD_CLOEXEC);
    /* READY (with our pid) before PROG starts: the write blocks until the host is connected. */
    char pid[16];
    int npid = snprintf(pid, sizeof pid, "%d", (int)getpid());
    if (sigfd < 0 || send_frame(port, F_READY, pid, (size_t)npid, READY_PATIENCE_MS) < 0) {
        fprintf(stderr, "isobox-run: no host end on virtio port %s\n", o->port);
        return 125;
    }
    pid_t child = fork();
    if (child < 0) { perror("isobox-run: fork"); return 125; }
    if (child == 0) {
        child_stdio(o, slave, pipes);
        _exit(become(argv, nenv));
    }
    if (slave >= 0) close(slave);
    for (int i = 0; i < 3; i++) {
        int theirs = i ? pipes[i][1] : pipes[i][0];
        if (theirs >= 0) close(theirs);
    }
    r.sigfd = sigfd;
    r.child = child;
    int code = pump(&r);
    if (code < 0) return 129; /* hung up */
    if (o->sync) sync();
    char text[16];
    int ntext = snprintf(text, sizeof text, "%d", code);
    send_frame(port, F_EXIT, text, (size_t)ntext, 0);
    return code;
}

int boot_main(void); /* guestboot.c */
int run_main(int argc, char **argv);

int main(int argc, char **argv) {
    if (strcmp(argv[0], "/init") == 0 && getpid() == 1) return boot_main();
    return run_main(argc, argv);
}

/* On the host: `isobox-run --launch LOG N QEMU ARGS(N-1)... -- MONITOR ARGS...` forks QEMU (stdin
 * /dev/null, stdout and stderr to LOG, no other fd) and execs the monitor in this process, which
 * thereby is QEMU's parent (ISOBOX_QEMU_PID names the child): QEMU starts ~35 ms sooner than from
 * the Python monitor, whose interpreter start-up now runs beside the boot. */
static int launch(int argc, char **argv) {
    int n = atoi(argv[3]);
    if (n < 1 || 4 + n >= argc || strcmp(argv[4 + n], "--") != 0 || 5 + n >= argc) {
        fprintf(stderr, "isobox-run: bad --launch arguments\n");
        return 125;
    }
    char **qemu = argv + 4, **monitor = argv + 5 + n;
    argv[4 + n] = NULL;
    pid_t pid = fork();
    if (pid < 0) { perror("isobox-run: fork"); return 125; }
    if (pid == 0) {
        int log = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int null = open("/dev/null", O_RDONLY);
        if (log < 0 || null < 0 || dup2(null, 0) < 0 || dup2(log, 1) < 0 || dup2(log, 2) < 0) _exit(125);
        close_range(3, ~0U, 0); /* the monitor's status pipe among them */
        execvp(qemu[0], qemu);
        dprintf(2, "cannot run %s: %s\n", qemu[0], strerror(errno));
        _exit(127);
    }
    char pidtext[16];
    snprintf(pidtext, sizeof pidtext, "%d", (int)pid);
    setenv("ISOBOX_QEMU_PID", pidtext, 1);
    execvp(monitor[0], monitor);
    perror("isobox-run: exec the monitor");
    kill(pid, SIGKILL);
    return 125;
}

/* Everything but the init: guestboot.c calls it in a fork for the workload's relay (an exec of
 * this binary would cost ~20 ms more under TCG). */
int run_main(int argc, char **argv) {
    if (argc > 4 && strcmp(argv[1], "--launch") == 0) return launch(argc, argv);
    if (argc > 3 && strcmp(argv[1], "--nice") == 0) { /* the init's: Debian's busybox has no `nice` */
        setpriority(PRIO_PROCESS, 0, atoi(argv[2]));
        execv(argv[3], argv + 3);
        perror("isobox-run: exec");
        return 127;
    }
    struct options o = { NULL, 0, 0, 0 };
    for (;;) {
        if (argc > 2 && (strcmp(argv[1], "--pty") == 0 || strcmp(argv[1], "--relay") == 0)) {
            o.is_pty = argv[1][2] == 'p';
            o.port = argv[2];
            argv += 2;
            argc -= 2;
        } else if (argc > 1 && (strcmp(argv[1], "--stdin") == 0 || strcmp(argv[1], "--sync") == 0)) {
            if (argv[1][3] == 't') o.want_stdin = 1; else o.sync = 1;
            argv += 1;
            argc -= 1;
        } else {
            break;
        }
    }
    if (argc < 9) { fprintf(stderr, "usage: isobox-run [--relay PORT [--stdin] | --pty PORT] [--sync] ROOT UID GID GROUPS WORKDIR NENV ENV... -- PROG\n"); return 125; }
    int nenv = atoi(argv[6]);
    if (7 + nenv + 1 >= argc || strcmp(argv[7 + nenv], "--") != 0) { fprintf(stderr, "isobox-run: bad arguments\n"); return 125; }
    if (o.port) return run_relay(&o, argv, nenv);
    if (chroot(argv[1]) < 0 || chdir("/") < 0) { perror("isobox-run: chroot"); return 125; }
    return become(argv, nenv);
}
