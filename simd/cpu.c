/* cpu.c — owns CPU feature detection (cpuid + xgetbv on x86, fixed on
 * aarch64) and the once-per-process choice of the kernel ISA level. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cpu.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define DS_X86 1
#endif

static ds_cpu_features features;
static ds_isa chosen = DS_ISA_SCALAR;
static char note[128];
static bool note_set;
static pthread_once_t detect_once = PTHREAD_ONCE_INIT;

static const char *isa_names[DS_ISA_COUNT] = {"scalar", "avx2", "avx512", "neon"};

#ifdef DS_X86
/* XCR0: which register states the OS saves on context switch.  A CPU that
 * has AVX but an OS that does not save YMM would corrupt registers. */
static unsigned long long read_xcr0(void)
{
    unsigned int lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}

static void detect_x86(ds_cpu_features *f)
{
    unsigned int a, b, c, d;
    unsigned int max = __get_cpuid_max(0, NULL);
    if (max < 1 || !__get_cpuid(1, &a, &b, &c, &d))
        return;
    const bool fma = c & (1u << 12), osxsave = c & (1u << 27);
    const bool avx = c & (1u << 28), f16c = c & (1u << 29);
    if (!osxsave || !avx)
        return;                                  /* xgetbv itself is illegal without OSXSAVE */
    const unsigned long long xcr0 = read_xcr0();
    const bool os_ymm = (xcr0 & 0x6) == 0x6;     /* SSE + AVX state */
    const bool os_zmm = (xcr0 & 0xe6) == 0xe6;   /* + opmask, ZMM_Hi256, Hi16_ZMM */
    if (max < 7 || !__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return;
    const bool avx2 = b & (1u << 5);
    const bool avx512f = b & (1u << 16), avx512dq = b & (1u << 17);
    const bool avx512bw = b & (1u << 30), avx512vl = b & (1u << 31);
    const bool vnni = c & (1u << 11), vbmi = c & (1u << 1);
    unsigned int a1 = 0, b1, c1, d1;
    if (a >= 1)                                  /* leaf 7 max sub-leaf in eax */
        __get_cpuid_count(7, 1, &a1, &b1, &c1, &d1);
    f->avx2 = os_ymm && avx2 && fma && f16c;
    f->avx512 = f->avx2 && os_zmm && avx512f && avx512dq && avx512bw && avx512vl;
    f->avx512_bf16 = f->avx512 && (a1 & (1u << 5));
    f->avx512_vnni = f->avx512 && vnni;
    f->avx512_vbmi = f->avx512 && vbmi;
}
#endif

/* Pure test on detected features; callable from inside the once-routine. */
static bool supported_by(const ds_cpu_features *f, ds_isa isa)
{
    switch (isa) {
    case DS_ISA_SCALAR: return true;
    case DS_ISA_AVX2: return f->avx2;
    case DS_ISA_AVX512: return f->avx512;
#if defined(__aarch64__)
    case DS_ISA_NEON: return f->neon;
#endif
    default: return false;
    }
}

static ds_isa best_of(const ds_cpu_features *f)
{
    for (int i = DS_ISA_COUNT - 1; i > DS_ISA_SCALAR; i--)
        if (supported_by(f, (ds_isa)i))
            return (ds_isa)i;
    return DS_ISA_SCALAR;
}

int ds_isa_from_name(const char *name)
{
    for (int i = 0; i < DS_ISA_COUNT; i++)
        if (strcmp(name, isa_names[i]) == 0)
            return i;
    return -1;
}

const char *ds_isa_name(ds_isa isa) { return (unsigned)isa < DS_ISA_COUNT ? isa_names[isa] : "?"; }

static void choose(void)
{
#ifdef DS_X86
    detect_x86(&features);
#elif defined(__aarch64__)
    features.neon = true;                        /* Advanced SIMD is mandatory in AArch64 */
#endif
    chosen = best_of(&features);
    const char *env = getenv("DSINFER_ISA");
    if (!env || !*env)
        return;
    int want = ds_isa_from_name(env);
    if (want < 0) {
        snprintf(note, sizeof note, "DSINFER_ISA=%.32s is not a known level; using %s", env, isa_names[chosen]);
        note_set = true;
    } else if (!supported_by(&features, (ds_isa)want)) {
        snprintf(note, sizeof note, "DSINFER_ISA=%s is not supported by this CPU; using %s", env,
                 isa_names[chosen]);
        note_set = true;
    } else {
        chosen = (ds_isa)want;
    }
}

static void init(void) { pthread_once(&detect_once, choose); }

const ds_cpu_features *ds_cpu_get_features(void)
{
    init();
    return &features;
}

ds_isa ds_cpu_isa(void)
{
    init();
    return chosen;
}

bool ds_cpu_isa_supported(ds_isa isa) { return supported_by(ds_cpu_get_features(), isa); }

ds_isa ds_cpu_isa_best(void) { return best_of(ds_cpu_get_features()); }

const char *ds_cpu_isa_name(void) { return isa_names[ds_cpu_isa()]; }

const char *ds_cpu_isa_note(void)
{
    init();
    return note_set ? note : NULL;
}
