/* The floor of the pump's design: an MQTT subscriber that does what FrameReader.pump does to the
 * socket and the scheduler -- poll when idle; under dense traffic read, send the quick ACK, nap,
 * read twice -- and nothing else: no parse into a ring, no engine, no Python, no NATS. Its CPU per
 * message is what the kernel and the hypervisor charge for the pump's reads and naps alone, so
 * the daemon's CPU above it is the part our own code can still take away (perf/wakeups_rig.py
 * runs it as the subject `floor`, on the same broker in the same run).
 *
 *     cc -O2 -o nap_floor perf/yardstick/nap_floor.c
 *     nap_floor PORT TOPIC_FILTER COUNTER_FILE [NAP_MS]
 *     nap_floor --calibrate [NAP_MS]
 *
 * Connects to 127.0.0.1:PORT (MQTT 3.1.1, clean session), subscribes to TOPIC_FILTER at QoS 0
 * and counts the PUBLISH packets it receives into the first 8 bytes of COUNTER_FILE (mapped
 * shared: the rig reads the count without this process making a syscall for it). SIGTERM ends
 * it. NAP_MS is the pump's nap ceiling (4 ms by default); like the pump at moderate rates it
 * naps the ceiling after every read that found data within a nap of its poll.
 *
 * --calibrate prints what one kernel entry and one nap cost this machine in CPU time, alone: the
 * mean of 200,000 getppid() syscalls (wall time: nothing else runs in them), and the thread's CPU
 * time over 500 naps of NAP_MS (the sleep, the timer and the wake-up of an idle CPU).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop_requested;

static void on_term(int sig) { (void)sig; stop_requested = 1; }

static double mono(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void nap(double seconds)
{
    struct timespec t = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
    clock_nanosleep(CLOCK_MONOTONIC, 0, &t, NULL);
}

static int send_all(int fd, const uint8_t *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static size_t put_remaining_length(uint8_t *p, size_t n)
{
    size_t i = 0;
    do {
        uint8_t b = n % 128;
        n /= 128;
        p[i++] = (uint8_t)(b | (n ? 128 : 0));
    } while (n);
    return i;
}

/* Complete packets in buf[0, len): counts PUBLISHes, returns the bytes consumed. */
static size_t count_packets(const uint8_t *buf, size_t len, uint64_t *publishes)
{
    size_t pos = 0;
    while (pos < len) {
        size_t rl = 0, mult = 1, i = pos + 1;
        for (;;) {
            if (i >= len) return pos;
            uint8_t b = buf[i++];
            rl += (size_t)(b & 127) * mult;
            mult *= 128;
            if (!(b & 128)) break;
            if (mult > 128u * 128 * 128 * 128) { fprintf(stderr, "bad length\n"); exit(2); }
        }
        if (i + rl > len) return pos;
        if ((buf[pos] >> 4) == 3) (*publishes)++;
        pos = i + rl;
    }
    return pos;
}

static double thread_cpu(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int calibrate(double nap_s)
{
    enum { SYSCALLS = 200000, NAPS = 500 };
    double t0 = mono();
    for (int i = 0; i < SYSCALLS; i++) syscall(SYS_getppid);
    double per_syscall = (mono() - t0) / SYSCALLS;
    double c0 = thread_cpu();
    for (int i = 0; i < NAPS; i++) nap(nap_s);
    double per_nap = (thread_cpu() - c0) / NAPS;
    printf("{\"syscall_ns\": %.0f, \"nap_ms\": %g, \"nap_cpu_us\": %.1f}\n", per_syscall * 1e9,
           nap_s * 1e3, per_nap * 1e6);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "--calibrate") == 0)
        return calibrate((argc > 2 ? atof(argv[2]) : 4.0) / 1000.0);
    if (argc < 4) {
        fprintf(stderr, "usage: %s PORT TOPIC_FILTER COUNTER_FILE [NAP_MS] | --calibrate [NAP_MS]\n",
                argv[0]);
        return 2;
    }
    int port = atoi(argv[1]);
    const char *filter = argv[2];
    double ceiling = (argc > 4 ? atof(argv[4]) : 4.0) / 1000.0;

    int cfd = open(argv[3], O_RDWR | O_CREAT, 0600);
    if (cfd < 0 || ftruncate(cfd, 8) < 0) { perror("counter file"); return 1; }
    volatile uint64_t *counter = mmap(NULL, 8, PROT_READ | PROT_WRITE, MAP_SHARED, cfd, 0);
    if (counter == MAP_FAILED) { perror("mmap"); return 1; }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) { perror("connect"); return 1; }

    uint8_t out[512];
    static const uint8_t connect_vh[] = {0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60};
    const char *client_id = "nap-floor";
    size_t cid = strlen(client_id), flen = strlen(filter);
    size_t body = sizeof connect_vh + 2 + cid, n = 0;
    out[n++] = 0x10;
    n += put_remaining_length(out + n, body);
    memcpy(out + n, connect_vh, sizeof connect_vh);
    n += sizeof connect_vh;
    out[n++] = (uint8_t)(cid >> 8);
    out[n++] = (uint8_t)cid;
    memcpy(out + n, client_id, cid);
    n += cid;
    body = 2 + 2 + flen + 1;
    out[n++] = 0x82;
    n += put_remaining_length(out + n, body);
    out[n++] = 0;
    out[n++] = 1;   /* packet id */
    out[n++] = (uint8_t)(flen >> 8);
    out[n++] = (uint8_t)flen;
    memcpy(out + n, filter, flen);
    n += flen;
    out[n++] = 0;   /* QoS 0 */
    if (send_all(fd, out, n) < 0) { perror("send"); return 1; }

    static uint8_t buf[1 << 20];
    size_t fill = 0;
    uint64_t publishes = 0;
    int one = 1;
    int after_nap = 0, ack_due = 0;
    double last_ping = mono();
    static const uint8_t pingreq[] = {0xC0, 0};
    while (!stop_requested) {
        double waited = 0.0;
        if (!after_nap) {
            if (ack_due) {
                setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
                ack_due = 0;
            }
            struct pollfd p = {.fd = fd, .events = POLLIN};
            double t0 = mono();
            if (poll(&p, 1, 1000) < 0) {
                if (errno == EINTR) continue;
                perror("poll");
                return 1;
            }
            if (!(p.revents & (POLLIN | POLLHUP | POLLERR))) goto keepalive;
            waited = mono() - t0;
        }
        ssize_t r = recv(fd, buf + fill, sizeof buf - fill, MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) { after_nap = 0; continue; }
            perror("recv");
            return 1;
        }
        if (r == 0) { fprintf(stderr, "broker closed the connection\n"); return 1; }
        ack_due = 1;
        if (after_nap && (size_t)r < sizeof buf - fill) {
            /* the pump's second read after a nap: what Nagle held back until the first's ACK */
            ssize_t m = recv(fd, buf + fill + r, sizeof buf - fill - r, MSG_DONTWAIT);
            if (m > 0) r += m;
        }
        fill += (size_t)r;
        size_t used = count_packets(buf, fill, &publishes);
        memmove(buf, buf + used, fill - used);
        fill -= used;
        *counter = publishes;
        after_nap = 0;
        if (waited < ceiling) {
            setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
            ack_due = 0;
            nap(ceiling);
            after_nap = 1;
        }
    keepalive:
        if (mono() - last_ping > 30.0) {
            if (send_all(fd, pingreq, sizeof pingreq) < 0) { perror("send"); return 1; }
            last_ping = mono();
        }
    }
    return 0;
}
