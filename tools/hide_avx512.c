/* hide_avx512.c: an LD_PRELOAD shim that makes a process (and the processes it starts, as long
 * as LD_PRELOAD is passed on) see a CPU without AVX-512 and AMX, so that an AVX-512 machine can
 * stand in for an AVX2-only one in `tools/peers_bench.py --hide-avx512`: every engine, grucell
 * (std's feature detection, faer) as well as PyTorch (ATen, MKL, oneDNN), ONNX Runtime (MLAS) and
 * TensorFlow (oneDNN), then picks its AVX2 code.
 *
 * How: Linux's CPUID faulting (arch_prctl(ARCH_SET_CPUID, 0), the mechanism rr uses; the CPU
 * flag `cpuid_fault`) turns every CPUID instruction of the process into a SIGSEGV; the handler
 * runs the real CPUID, clears the AVX-512 and AMX bits of leaf 7 and steps over the instruction.
 * The setting is per thread, inherited by threads created later and reset by execve, so it is
 * made in a constructor, before the program's own code asks. What it does not hide: code that
 * was compiled for AVX-512 unconditionally, and glibc's own string functions (the dynamic loader
 * picks them before any constructor runs). Where the kernel refuses CPUID faulting the process
 * stops with exit code 97 rather than run with AVX-512 visible.
 *
 *     cc -O2 -shared -fPIC -o hide_avx512.so tools/hide_avx512.c
 *     LD_PRELOAD=$PWD/hide_avx512.so target/release/grucell bench --sizes M   # "kernels: avx2"
 */
#define _GNU_SOURCE
#include <cpuid.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#ifndef ARCH_SET_CPUID
#define ARCH_SET_CPUID 0x1012
#endif

static struct sigaction previous;

/* Leaf 7, sub-leaf 0: EBX avx512f, dq, ifma, pf, er, cd, bw, vl. */
#define HIDE_7_0_EBX ((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) | (1u << 31))
/* ECX avx512vbmi, vbmi2, vnni, bitalg, vpopcntdq. */
#define HIDE_7_0_ECX ((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14))
/* EDX avx512_4vnniw, 4fmaps, vp2intersect, amx_bf16, avx512_fp16, amx_tile, amx_int8. */
#define HIDE_7_0_EDX ((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) | (1u << 25))
/* Leaf 7, sub-leaf 1: EAX avx512_bf16. */
#define HIDE_7_1_EAX (1u << 5)

static void on_segv(int sig, siginfo_t *info, void *context) {
    ucontext_t *uc = (ucontext_t *)context;
    greg_t *g = uc->uc_mcontext.gregs;
    const uint8_t *ip = (const uint8_t *)g[REG_RIP];
    if (sig == SIGSEGV && info->si_code == SI_KERNEL && ip[0] == 0x0f && ip[1] == 0xa2) {
        unsigned leaf = (unsigned)g[REG_RAX], sub = (unsigned)g[REG_RCX];
        unsigned a, b, c, d;
        syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
        __cpuid_count(leaf, sub, a, b, c, d);
        syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
        if (leaf == 7 && sub == 0) {
            b &= ~HIDE_7_0_EBX;
            c &= ~HIDE_7_0_ECX;
            d &= ~HIDE_7_0_EDX;
        } else if (leaf == 7 && sub == 1) {
            a &= ~HIDE_7_1_EAX;
        }
        g[REG_RAX] = a;
        g[REG_RBX] = b;
        g[REG_RCX] = c;
        g[REG_RDX] = d;
        g[REG_RIP] += 2;
        return;
    }
    /* Not a CPUID: whatever handled SIGSEGV before (or the default, a crash) takes it. */
    if (previous.sa_flags & SA_SIGINFO) {
        previous.sa_sigaction(sig, info, context);
    } else if (previous.sa_handler == SIG_IGN) {
        return;
    } else if (previous.sa_handler != SIG_DFL) {
        previous.sa_handler(sig);
    } else {
        signal(SIGSEGV, SIG_DFL);
        raise(SIGSEGV);
    }
}

__attribute__((constructor)) static void hide_avx512(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &previous);
    if (syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) {
        static const char msg[] = "hide_avx512: this kernel or CPU refuses CPUID faulting "
                                  "(arch_prctl ARCH_SET_CPUID); stopping rather than run with AVX-512 visible\n";
        (void)!write(2, msg, sizeof msg - 1);
        _exit(97);
    }
}
