/* netbench: the one program behind every path of bench/network.py, so each path runs the same
 * code -- on the host side, and bind-mounted read-only into containers and VMs (a static binary:
 * it needs nothing from the busybox image or the guest).
 *
 *   netbench serve ADDR PORT                 fork per connection; its first byte picks the mode:
 *                                            'S' sink (count bytes until EOF, answer the count),
 *                                            'E' echo (TCP_NODELAY, send back what arrives)
 *   netbench stream HOST PORT SECONDS        write 128 KiB chunks for SECONDS, half-close, wait
 *                                            for the server's count: prints bytes, seconds, Gbps
 *   netbench rr HOST PORT COUNT WARMUP       1-byte ping-pong: prints COUNT round trips in us
 *
 * Built by bench/network.py with: gcc -O2 -static -o netbench netbench.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (128 * 1024)
static char buf[CHUNK];

static void die(const char *what) { perror(what); exit(1); }

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void write_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) { if (errno == EINTR) continue; die("write"); }
        p += w; n -= (size_t)w;
    }
}

static void read_all(int fd, char *p, size_t n) {
    while (n) {
        ssize_t r = read(fd, p, n);
        if (r < 0) { if (errno == EINTR) continue; die("read"); }
        if (r == 0) { fprintf(stderr, "read: connection closed early\n"); exit(1); }
        p += r; n -= (size_t)r;
    }
}

static void nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void serve_one(int fd) {
    char mode;
    read_all(fd, &mode, 1);
    if (mode == 'S') {  /* sink: count until EOF, answer with the count */
        uint64_t total = 0;
        for (;;) {
            ssize_t r = read(fd, buf, sizeof buf);
            if (r < 0) { if (errno == EINTR) continue; die("read"); }
            if (r == 0) break;
            total += (uint64_t)r;
        }
        write_all(fd, (char *)&total, sizeof total);
    } else if (mode == 'E') {  /* echo whatever arrives */
        nodelay(fd);
        for (;;) {
            ssize_t r = read(fd, buf, sizeof buf);
            if (r < 0) { if (errno == EINTR) continue; die("read"); }
            if (r == 0) break;
            write_all(fd, buf, (size_t)r);
        }
    }
    close(fd);
}

static int serve(const char *addr, int port) {
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (s < 0) die("socket");
    if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1) { fprintf(stderr, "bad address %s\n", addr); return 2; }
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(s, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
    if (listen(s, 64) < 0) die("listen");
    signal(SIGCHLD, SIG_IGN);  /* children reaped by the kernel */
    printf("listening %s:%d\n", addr, port);
    fflush(stdout);
    for (;;) {
        int c = accept4(s, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) { if (errno == EINTR || errno == ECONNABORTED) continue; die("accept"); }
        pid_t pid = fork();
        if (pid == 0) { close(s); serve_one(c); _exit(0); }
        close(c);
    }
}

static int dial(const char *host, int port) {
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) { fprintf(stderr, "bad address %s\n", host); exit(2); }
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) die("socket");
    if (connect(s, (struct sockaddr *)&sa, sizeof sa) < 0) die("connect");
    return s;
}

static int stream(const char *host, int port, double seconds) {
    int s = dial(host, port);
    uint64_t total = 0;
    write_all(s, "S", 1);
    double start = now(), end = start + seconds;
    while (now() < end) write_all(s, buf, sizeof buf);
    shutdown(s, SHUT_WR);
    read_all(s, (char *)&total, sizeof total);  /* everything arrived */
    double elapsed = now() - start;
    printf("stream bytes=%llu seconds=%.6f gbps=%.4f\n", (unsigned long long)total, elapsed,
           total * 8 / elapsed / 1e9);
    close(s);
    return 0;
}

static int rr(const char *host, int port, int count, int warmup) {
    int s = dial(host, port);
    char c = 'x';
    nodelay(s);
    write_all(s, "E", 1);
    double *rtt = malloc(sizeof(double) * (size_t)count);
    if (!rtt) die("malloc");
    for (int i = -warmup; i < count; i++) {
        double t0 = now();
        write_all(s, &c, 1);
        read_all(s, &c, 1);
        if (i >= 0) rtt[i] = (now() - t0) * 1e6;
    }
    printf("rr_us");
    for (int i = 0; i < count; i++) printf(" %.2f", rtt[i]);
    printf("\n");
    close(s);
    return 0;
}

int main(int argc, char **argv) {
    alarm(300);  /* never hang a benchmark: no run of this program lasts that long */
    memset(buf, 'z', sizeof buf);
    if (argc == 4 && !strcmp(argv[1], "serve")) { alarm(0); return serve(argv[2], atoi(argv[3])); }
    if (argc == 5 && !strcmp(argv[1], "stream")) return stream(argv[2], atoi(argv[3]), atof(argv[4]));
    if (argc == 6 && !strcmp(argv[1], "rr")) return rr(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]));
    fprintf(stderr, "usage: netbench serve ADDR PORT | stream HOST PORT SECONDS | rr HOST PORT COUNT WARMUP\n");
    return 2;
}
