/* The first stage of the guest's /init (PID 1), linked into isobox-run and entered as /init.
 *
 * What it does was ~30 fork+execs of busybox in the init script; under TCG each costs 10-20 ms of
 * guest CPU, and the device wait forked a subshell and a `cat` per disk per poll.  Here it is one
 * process: mount /proc, /sys and /dev; load the virtio modules (finit_module, in guestinit's
 * order); wait for the root and spec disks (found by virtio serial, as is the tools disk that
 * start_agent mounts for qemu-ga) and the ports (linked as
 * /dev/port-NAME); copy the spec script up to its "#END" line to /spec.sh; mount the image's
 * root disk at /newroot with its /proc, /sys, /dev, /dev/pts and /dev/shm; bring up lo.  Then it
 * execs the script stage (/init.sh, guestinit.py) with ROOT and SPEC in its environment — or,
 * for a spec without network and volumes, does the script's remaining steps itself
 * (start_direct), which spares the exec of a shell and its forks.
 *
 * A failure is reported as the script reports it: an "isobox-init: error: ..." line on the
 * console, which the host takes for the run's error; then the VM powers off.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MODULE_DIR "/lib/modules/"
#define DEVICE_PATIENCE_S 10 /* the script waited 2000 polls of >= 5 ms */
#define POLL_NS 2000000L

/* Load order matters: no modules.dep in the initramfs (guest.MODULES lists the same). */
static const char *const boot_modules[] = { "virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "virtio_console" };

static void say(const char *fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if (n > (int)sizeof line - 2) n = (int)sizeof line - 2;
    line[n++] = '\n';
    int fd = open("/dev/console", O_WRONLY | O_NOCTTY);
    if (fd >= 0) {
        (void)!write(fd, "isobox-init: ", 13);
        (void)!write(fd, line, (size_t)n);
        close(fd);
    }
}

static void __attribute__((noreturn)) fail(const char *what) {
    say("error: %s", what);
    sync();
    reboot(RB_POWER_OFF);
    for (;;) pause();
}

static void load_modules(void) {
    char path[128];
    for (size_t i = 0; i < sizeof boot_modules / sizeof boot_modules[0]; i++) {
        snprintf(path, sizeof path, MODULE_DIR "%s.ko", boot_modules[i]);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue; /* built into this kernel */
        if (syscall(SYS_finit_module, fd, "", 0) < 0 && errno != EEXIST) say("cannot load %s: %s", path, strerror(errno));
        close(fd);
    }
}

/* The first line of a small sysfs attribute, without its newline; "" when unreadable (guestrun.c
 * reads port names with it too). */
void read_attr(const char *path, char *out, size_t size) {
    out[0] = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    ssize_t n = read(fd, out, size - 1);
    close(fd);
    if (n < 0) n = 0;
    out[n] = 0;
    out[strcspn(out, "\n")] = 0;
}

struct found { char root[300], spec[300], tools[300]; };

static void scan_disks(struct found *f) {
    DIR *d = opendir("/sys/block");
    if (!d) return;
    for (struct dirent *e; (e = readdir(d));) {
        if (strncmp(e->d_name, "vd", 2) != 0) continue;
        char path[300], serial[64];
        snprintf(path, sizeof path, "/sys/block/%s/serial", e->d_name);
        read_attr(path, serial, sizeof serial);
        char *slot = strcmp(serial, "isobox-root") == 0 ? f->root : strcmp(serial, "isobox-spec") == 0 ? f->spec
                   : strcmp(serial, "isobox-tools") == 0 ? f->tools : NULL;
        if (slot) snprintf(slot, sizeof f->root, "/dev/%s", e->d_name);
    }
    closedir(d);
}

/* /dev/port-NAME -> /dev/vportXpY for every named port whose node exists (udev's by-name job). */
static void link_ports(void) {
    DIR *d = opendir("/sys/class/virtio-ports");
    if (!d) return;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        char path[300], name[128], node[300], link[300];
        snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
        read_attr(path, name, sizeof name);
        snprintf(node, sizeof node, "/dev/%s", e->d_name);
        snprintf(link, sizeof link, "/dev/port-%s", name);
        if (name[0] && access(node, F_OK) == 0) (void)!symlink(node, link);
    }
    closedir(d);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Until the disks and the io and agent ports are there (qemu.py's): the agent's port is the
 * last on QEMU's command line, so once it is linked the io port is too. */
static void wait_for_devices(struct found *f) {
    double deadline = now() + DEVICE_PATIENCE_S;
    for (;;) {
        if (!f->root[0] || !f->spec[0]) scan_disks(f);
        link_ports();
        if (f->root[0] && f->spec[0] && access("/dev/port-io", F_OK) == 0
            && access("/dev/port-org.qemu.guest_agent.0", F_OK) == 0) return;
        if (now() > deadline) fail("devices did not appear");
        struct timespec pause_ts = { 0, POLL_NS };
        nanosleep(&pause_ts, NULL);
    }
}

/* The direct start (see parse_direct); argv points into copy_spec's buffer. */
struct direct { const char *hostname; int argc; char *argv[4096]; };

/* After the script's NUL the spec disk may hold "isobox-direct\0HOSTNAME\0ARGC\0ARG...\0": the
 * workload's relay command line, for a spec the script stage has nothing more to do for (no
 * network, no volumes).  Anything that does not parse exactly leaves the script to do it all. */
static int parse_direct(char *p, const char *end, struct direct *d) {
    char *field[3];
    for (int i = 0; i < 3; i++) {
        char *nul = memchr(p, 0, (size_t)(end - p));
        if (!nul) return 0;
        field[i] = p;
        p = nul + 1;
    }
    char *stop;
    long argc = strtol(field[2], &stop, 10);
    if (strcmp(field[0], "isobox-direct") != 0 || *stop || argc < 1 || argc >= 4096) return 0;
    for (long i = 0; i < argc; i++) {
        char *nul = memchr(p, 0, (size_t)(end - p));
        if (!nul) return 0;
        d->argv[i] = p;
        p = nul + 1;
    }
    d->argv[argc] = NULL;
    d->argc = (int)argc;
    d->hostname = field[1];
    return 1;
}

/* The spec disk holds a sh script ending in a "#END" line, then zeroes to the block size.  The
 * script is what precedes the first NUL (argv and env cannot hold one), so a value that happens
 * to contain a "#END" line cannot cut it short.  Returns whether a direct start follows it. */
static int copy_spec(const char *dev, struct direct *d) {
    static char buf[1 << 20];
    int in = open(dev, O_RDONLY | O_CLOEXEC);
    if (in < 0) fail("cannot open the spec disk");
    size_t len = 0;
    while (len < sizeof buf) {
        ssize_t n = read(in, buf + len, sizeof buf - len);
        if (n <= 0) break;
        len += (size_t)n;
    }
    close(in);
    char *nul = memchr(buf, 0, len);
    size_t keep = nul ? (size_t)(nul - buf) : len;
    if (keep < 6 || memcmp(buf + keep - 6, "\n#END\n", 6) != 0) fail("the spec disk holds no complete script");
    int out = open("/spec.sh", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (out < 0 || write(out, buf, keep) != (ssize_t)keep) fail("cannot write /spec.sh");
    close(out);
    return nul && parse_direct(nul + 1, buf + len, d);
}

static void must_mount(const char *src, const char *target, const char *type, unsigned long flags, const char *data) {
    if (mount(src, target, type, flags, data) < 0) {
        char what[256];
        snprintf(what, sizeof what, "cannot mount %s on %s: %s", type, target, strerror(errno));
        fail(what);
    }
}

static void mount_newroot(const char *root) {
    if (mount(root, "/newroot", "ext4", 0, NULL) < 0) fail("cannot mount the root disk");
    static const char *const dirs[] = { "/newroot/proc", "/newroot/sys", "/newroot/dev", "/newroot/tmp" };
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) mkdir(dirs[i], 0755);
    must_mount("proc", "/newroot/proc", "proc", 0, NULL);
    must_mount("sys", "/newroot/sys", "sysfs", 0, NULL);
    must_mount("dev", "/newroot/dev", "devtmpfs", 0, NULL);
    mkdir("/newroot/dev/pts", 0755);
    mkdir("/newroot/dev/shm", 0755);
    must_mount("devpts", "/newroot/dev/pts", "devpts", 0, "newinstance,ptmxmode=0666");
    must_mount("shm", "/newroot/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, NULL);
}

static void loopback_up(void) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "lo");
    if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
        ifr.ifr_flags |= IFF_UP;
        (void)ioctl(s, SIOCSIFFLAGS, &ifr);
    }
    close(s);
}

static char *const boot_env[] = { "PATH=/bin:/sbin", "HOME=/", "TERM=linux", NULL };

int run_main(int argc, char **argv); /* guestrun.c */

/* In a child of the init: stdio on the console (stdin from /dev/null unless ``console_in``). */
static void console_stdio(int console_in, int niceness) {
    int con = open("/dev/console", O_RDWR | O_NOCTTY);
    int in = console_in ? con : open("/dev/null", O_RDONLY);
    if (con < 0 || in < 0) _exit(125);
    dup2(in, 0);
    dup2(con, 1);
    dup2(con, 2);
    setpriority(PRIO_PROCESS, 0, niceness);
}

/* A child of the init with its stdio on the console; isobox-run itself (the workload's relay)
 * runs in the fork without an exec. */
static pid_t spawn(char *const argv[], int niceness, int console_in) {
    pid_t pid = fork();
    if (pid != 0) return pid;
    console_stdio(console_in, niceness);
    if (strcmp(argv[0], "/bin/isobox-run") == 0) {
        int argc = 0;
        while (argv[argc]) argc++;
        _exit(run_main(argc, (char **)argv));
    }
    execve(argv[0], argv, boot_env);
    _exit(127);
}

/* qemu-ga (exec, cp, shutdown) at nice 19, off the workload's critical path: its child mounts
 * the tools disk, where the agent and its libraries are (guest.py), then execs it. */
static void start_agent(const char *tools) {
    if (!tools[0] || fork() != 0) return;
    console_stdio(0, 19);
    if (mount(tools, "/tools", "ext4", MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) < 0) {
        say("cannot mount the tools disk: %s; no guest agent (exec, cp)", strerror(errno));
        _exit(125);
    }
    char *const agent[] = { "/usr/sbin/qemu-ga", "-m", "virtio-serial", "-p", "/dev/port-org.qemu.guest_agent.0",
                            "-t", "/run/qga", NULL };
    execve(agent[0], agent, boot_env);
    _exit(127);
}

/* What /init.sh does for a spec without network and volumes, without its shell: the hostname,
 * the workload behind its relay, then (at nice 19, off the workload's critical path) the guest
 * agent and the console's root shell; power off when the relay is done. */
static void __attribute__((noreturn)) start_direct(const struct direct *d, const char *tools) {
    if (sethostname(d->hostname, strlen(d->hostname)) < 0) fail("cannot set the hostname");
    say("workload");
    pid_t relay = spawn(d->argv, 0, 0);
    if (relay < 0) fail("cannot start the workload");
    /* From here on the init only starts helpers and reaps: its forks yield to the relay's. */
    setpriority(PRIO_PROCESS, 0, 19);
    start_agent(tools);
    char *const shell[] = { "/bin/setsid", "cttyhack", "sh", "-c", "renice 0 -p $$ >/dev/null; while :; do sh; done", NULL };
    spawn(shell, 19, 1);
    for (;;) { /* PID 1 reaps every orphan meanwhile */
        int status;
        pid_t done = waitpid(-1, &status, 0);
        if (done == relay || (done < 0 && errno == ECHILD)) break;
    }
    sync();
    reboot(RB_POWER_OFF);
    for (;;) pause();
}

int boot_main(void) {
    must_mount("proc", "/proc", "proc", 0, NULL);
    must_mount("sys", "/sys", "sysfs", 0, NULL);
    must_mount("dev", "/dev", "devtmpfs", 0, NULL);
    load_modules();
    struct found f = { "", "", "" };
    wait_for_devices(&f);
    static struct direct d;
    int direct = copy_spec(f.spec, &d);
    mount_newroot(f.root);
    loopback_up();
    mkdir("/run/qga", 0755); /* the guest agent's state directory */
    if (direct) start_direct(&d, f.tools);
    start_agent(f.tools);
    char env_root[320], env_spec[320];
    snprintf(env_root, sizeof env_root, "ROOT=%s", f.root);
    snprintf(env_spec, sizeof env_spec, "SPEC=%s", f.spec);
    char *const argv[] = { "sh", "/init.sh", NULL };
    char *const envp[] = { "PATH=/bin:/sbin", "HOME=/", "TERM=linux", env_root, env_spec, NULL };
    execve("/bin/sh", argv, envp);
    fail("cannot run /init.sh");
}
