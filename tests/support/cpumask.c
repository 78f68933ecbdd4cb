/* A process that sees a smaller CPU: LD_PRELOAD this library with CPUMASK set to a kind of x86
 * CPU, and CPUID (as ONNX Runtime's MLAS, std_detect and cpuinfo read it) reports only that
 * kind's vector features, so libraries pick the kernels such a CPU would run, natively and at
 * full speed. Masking only removes features: a host can pass for a kind whose features it has.
 *
 *   CPUMASK=avx2         AVX2 and FMA, no AVX-512, no VNNI, no AMX (AMD EPYC Rome/Milan, Haswell)
 *   CPUMASK=avx512       AVX-512 without VNNI or AMX (Skylake-SP)
 *   CPUMASK=avx-vnni     AVX2 with AVX-VNNI, no AVX-512 (Alder Lake)
 *   CPUMASK=avx512-vnni  AVX-512 with VNNI, no AMX (Cascade Lake, Ice Lake, AMD Zen 4)
 *
 * Every kind also hides AMX, AVX512-BF16 and AVX-VNNI-INT8/INT16.
 *
 * How: Linux's CPUID faulting (arch_prctl ARCH_SET_CPUID 0; inherited by threads, reset by
 * execve, hence LD_PRELOAD) turns every CPUID instruction into SIGSEGV; the handler runs the
 * real CPUID with faulting briefly off, clears the masked bits of leaf 7 and returns past the
 * instruction. glibc reads CPUID before this constructor runs and keeps its own choices (memcpy
 * and the like, exact on any kind). A host without CPUID faulting exits with status 3: a test
 * must not pass on a CPU it did not emulate.
 *
 * Build: cc -O2 -shared -fPIC tests/support/cpumask.c -o libcpumask.so (tests/api/cpu_kinds.rs
 * does). Test-only: never part of the service. */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define BIT(n) (1u << (n))

/* Leaf 7, subleaf 0. */
static const uint32_t AVX512_EBX = BIT(16) | BIT(17) | BIT(21) | BIT(26) | BIT(27) | BIT(28) | BIT(30) | BIT(31);
static const uint32_t AVX512_ECX = BIT(1) | BIT(6) | BIT(11) | BIT(12) | BIT(14);
static const uint32_t AVX512_EDX = BIT(2) | BIT(3) | BIT(8) | BIT(23);
static const uint32_t AVX512_VNNI_ECX = BIT(11);
static const uint32_t AMX_EDX = BIT(22) | BIT(24) | BIT(25);
/* Leaf 7, subleaf 1: AVX-VNNI and AVX512-BF16 in EAX; AVX-VNNI-INT8 and -INT16 in EDX. */
static const uint32_t AVX_VNNI_EAX = BIT(4);
static const uint32_t AVX512_BF16_EAX = BIT(5);
static const uint32_t AVX_VNNI_INTX_EDX = BIT(4) | BIT(10);

static uint32_t hide_7b, hide_7c, hide_7d, hide_71a, hide_71d;
static struct sigaction previous;

static void say(const char *s) {
  ssize_t ignored = write(2, s, strlen(s));
  (void)ignored;
}

static void on_segv(int sig, siginfo_t *info, void *context) {
  (void)sig;
  (void)info;
  greg_t *r = ((ucontext_t *)context)->uc_mcontext.gregs;
  const unsigned char *ip = (const unsigned char *)r[REG_RIP];
  if (ip[0] != 0x0f || ip[1] != 0xa2) {
    /* Not CPUID: the fault is real. Put the previous handler back and fault again. */
    sigaction(SIGSEGV, &previous, NULL);
    return;
  }
  uint32_t leaf = (uint32_t)r[REG_RAX], sub = (uint32_t)r[REG_RCX], a, b, c, d;
  syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
  __cpuid_count(leaf, sub, a, b, c, d);
  syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
  if (leaf == 7 && sub == 0) {
    b &= ~hide_7b;
    c &= ~hide_7c;
    d &= ~hide_7d;
  } else if (leaf == 7 && sub == 1) {
    a &= ~hide_71a;
    d &= ~hide_71d;
  }
  r[REG_RAX] = a;
  r[REG_RBX] = b;
  r[REG_RCX] = c;
  r[REG_RDX] = d;
  r[REG_RIP] += 2;
}

__attribute__((constructor)) static void start(void) {
  const char *kind = getenv("CPUMASK");
  if (kind == NULL || *kind == '\0') return;
  int avx512 = 0, avx512_vnni = 0, avx_vnni = 0;
  if (!strcmp(kind, "avx2")) {
  } else if (!strcmp(kind, "avx512")) {
    avx512 = 1;
  } else if (!strcmp(kind, "avx-vnni")) {
    avx_vnni = 1;
  } else if (!strcmp(kind, "avx512-vnni")) {
    avx512 = avx512_vnni = 1;
  } else {
    say("cpumask: CPUMASK must be avx2, avx512, avx-vnni or avx512-vnni\n");
    _exit(2);
  }
  hide_7b = avx512 ? 0 : AVX512_EBX;
  hide_7c = (avx512 ? 0 : AVX512_ECX) | (avx512_vnni ? 0 : AVX512_VNNI_ECX);
  hide_7d = (avx512 ? 0 : AVX512_EDX) | AMX_EDX;
  hide_71a = (avx_vnni ? 0 : AVX_VNNI_EAX) | AVX512_BF16_EAX;
  hide_71d = AVX_VNNI_INTX_EDX;

  struct sigaction action;
  memset(&action, 0, sizeof action);
  action.sa_sigaction = on_segv;
  action.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigaction(SIGSEGV, &action, &previous);
  if (syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) {
    say("cpumask: this host has no CPUID faulting (arch_prctl ARCH_SET_CPUID): it cannot hide CPU features\n");
    _exit(3);
  }
}
