//! PyTorch's CPU random numbers, bit for bit: `torch.manual_seed(seed)` then
//! `torch.randn(n)` in float32, and ComfyUI's `prepare_noise` built on them, so that a seed
//! gives the same starting noise here as in ComfyUI's `RandomNoise` / `KSampler`.
//!
//! Written from PyTorch's sources (`aten/src/ATen/core/MT19937RNGEngine.h`,
//! `CPUGeneratorImpl.cpp`, `core/DistributionsHelper.h`, `core/TransformationHelper.h`,
//! `native/cpu/DistributionTemplates.h`, `native/cpu/avx_mathfun.h`,
//! `native/cpu/DistributionKernels.cpp`) and checked against torch 2.15.0 (PyPI wheel, x86-64) by
//! `crates/models/tests/torch_noise.rs` on fixtures made by `.verify/parity/make_torch_noise.py`.
//!
//! # What torch does
//!
//! * **Generator.** A CPU generator is a 32-bit MT19937 ([`Mt19937`]). `manual_seed(seed)` keeps
//!   the seed as a `u64` but seeds the engine with its low 32 bits only, so seeds that differ only
//!   above bit 31 give the same numbers (ComfyUI seeds go up to 2^64 - 1). Seeding also clears the
//!   cached second Box–Muller sample.
//! * **`numel >= 16`, contiguous, float32** (`normal_fill`): every element first gets a uniform
//!   `(r & 0xFF_FFFF) / 2^24` from one 32-bit draw; then each whole block of 16 is turned into
//!   normals by Box–Muller on its 8 pairs (`u1 = 1 - x[j]`, `u2 = x[j + 8]`,
//!   `x[j] = r cos θ`, `x[j + 8] = r sin θ`). When `numel % 16 != 0`, 16 fresh uniforms are drawn
//!   and the transform rewrites the *last* 16 elements, overlapping the last whole block.
//! * **`numel < 16`** (or non-contiguous): a serial loop over `normal_distribution<double>`:
//!   53-bit uniforms from two 32-bit draws each, `r = sqrt(-2 log1p(-u2))`, `θ = 2π u1`, returning
//!   `r cos θ` and caching `r sin θ` in the generator for the next element, rounded to float32.
//!
//! # Which Box–Muller kernel: AVX2 with Cephes polynomials, and its compiler's FMAs
//!
//! `normal_kernel` is compiled once per CPU capability (DEFAULT, AVX2, AVX512) and picked at run
//! time. `DistributionKernels.cpp` registers `normal_stub` with `REGISTER_NO_AVX512_DISPATCH`, so
//! a CPU with AVX-512 falls back to the **AVX2** kernel: torch 2.15.0's `libtorch_cpu.so` holds
//! only two copies of `normal_kernel` (DEFAULT and AVX2), and `ATEN_CPU_CAPABILITY=avx2` and
//! `=avx512` give the same bits. torch picks AVX2 on x86-64 CPUs that have AVX2 and FMA.
//!
//! That kernel is **not** Sleef: it is `NormalFill16<float, true>` with `log256_ps` and
//! `sincos256_ps` from `avx_mathfun.h` (Cephes polynomials in float32, written as separate
//! `_mm256_mul_ps` / `_mm256_add_ps`). Its bits then depend on the compiler:
//!
//! * **Linux wheels (GCC)**: FP contraction is on, so GCC fuses 20 of those mul/add pairs into
//!   FMAs (read off the disassembly of torch 2.15.0's `NormalFill16<float, true>::operator()`;
//!   torch 2.7.1's Linux `normal_fill` shows the same pattern). [`NormalKernel::Avx2Gcc`]
//!   reproduces it with [`f32::mul_add`] at exactly those places. This is the default.
//! * **Windows wheels (MSVC)**: torch 2.15.0's `torch_cpu.dll` has no FMA in that code except
//!   the two explicit `_mm256_fmadd_ps`; every product and sum is rounded on its own.
//!   [`NormalKernel::Avx2Msvc`] does that; about 1% of its values differ from the Linux ones in
//!   the last bit. It is checked against torch's header compiled with `-ffp-contract=off`, not
//!   against torch running on Windows.
//!
//! A CPU where torch picks its DEFAULT capability (x86-64 without AVX2+FMA, or
//! `ATEN_CPU_CAPABILITY=default`) runs the scalar `NormalFill16` template instead: float32
//! `std::log`, `std::cos`, `std::sin` from the C library, `θ` computed in double and rounded.
//! [`NormalKernel::Scalar`] does the same through Rust's `f32::ln` / `cos` / `sin`, which call
//! the platform's `logf` / `cosf` / `sinf`; it matches torch's DEFAULT kernel only where both use
//! the same C library (checked: glibc on x86-64 Linux). glibc's float functions are not correctly
//! rounded, so computing in `f64` and rounding does *not* match (about 1.5% of values differ).
//! ARM builds of torch (Apple silicon, aarch64 Linux) also take the scalar template, with their
//! own libm and compiler; they are not checked here.
//!
//! The draws of fewer than 16 values go through `f64` `log1p`, `sin` and `cos` of the C library
//! and are rounded to float32 at the end; another libm could change a value only where an `f64`
//! difference of one ulp crosses a float32 rounding boundary.
//!
//! Not covered: torch releases other than 2.15.0 run (2.7.1 only inspected as above), and
//! non-contiguous or half/bfloat16 outputs (ComfyUI draws float32, contiguous).
//!
//! [`comfy_noise`] and [`randn`] use [`NormalKernel::Avx2Gcc`], what ComfyUI computes with
//! torch on x86-64 Linux, so a seed gives the same noise on every machine here.

use std::f64::consts::PI;

use rayon::prelude::*;

/// Blocks of 16 values one task of the parallel Box–Muller transform takes.
const BLOCKS_PER_TASK: usize = 1024;

const STATE_WORDS: usize = 624;
const SHIFT_WORDS: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// PyTorch's MT19937 engine (`at::mt19937`): the 32-bit Mersenne Twister of Matsumoto and
/// Nishimura with the 2002 initialisation, seeded from the low 32 bits of a `u64` seed.
#[derive(Clone)]
pub struct Mt19937 {
    seed: u64,
    state: [u32; STATE_WORDS],
    /// Index of the next state word to temper; `STATE_WORDS` means the state must be
    /// regenerated first (as after seeding).
    index: usize,
}

impl std::fmt::Debug for Mt19937 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mt19937")
            .field("seed", &self.seed)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl Mt19937 {
    /// Seeds the engine as `at::mt19937(seed)` does: `seed` is remembered whole, but only
    /// `seed & 0xFFFF_FFFF` enters the state.
    pub fn new(seed: u64) -> Self {
        let mut state = [0u32; STATE_WORDS];
        state[0] = seed as u32; // truncation to the low 32 bits, as PyTorch does
        for i in 1..STATE_WORDS {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Self {
            seed,
            state,
            index: STATE_WORDS,
        }
    }

    /// The seed given to [`Mt19937::new`], all 64 bits (`Generator.initial_seed()`).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The next 32-bit output.
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= STATE_WORDS {
            self.regenerate();
        }
        let y = self.state[self.index];
        self.index += 1;
        temper(y)
    }

    /// `f(next_u32())` into each element of `out`, in order: the same outputs as that many calls,
    /// a state block at a time (what a large `torch.randn` draws first).
    pub fn fill_with<T>(&mut self, out: &mut [T], f: impl Fn(u32) -> T) {
        let mut rest = out;
        while !rest.is_empty() {
            if self.index >= STATE_WORDS {
                self.regenerate();
            }
            let take = (STATE_WORDS - self.index).min(rest.len());
            let (now, later) = rest.split_at_mut(take);
            let words = &self.state[self.index..self.index + take];
            for (v, &w) in now.iter_mut().zip(words) {
                *v = f(temper(w));
            }
            self.index += take;
            rest = later;
        }
    }

    /// The next block of state words. Word `i` mixes words `i` and `i + 1` and adds word
    /// `i + 397`, all mod 624, where words below `i` are already new: the three ranges below
    /// are that loop without its remainders.
    fn regenerate(&mut self) {
        let st = &mut self.state;
        let twist = |upper: u32, lower: u32, far: u32| -> u32 {
            let mixed = (upper & UPPER_MASK) | (lower & LOWER_MASK);
            let odd = if lower & 1 == 1 { MATRIX_A } else { 0 };
            far ^ (mixed >> 1) ^ odd
        };
        for i in 0..STATE_WORDS - SHIFT_WORDS {
            st[i] = twist(st[i], st[i + 1], st[i + SHIFT_WORDS]);
        }
        for i in STATE_WORDS - SHIFT_WORDS..STATE_WORDS - 1 {
            st[i] = twist(st[i], st[i + 1], st[i + SHIFT_WORDS - STATE_WORDS]);
        }
        let last = STATE_WORDS - 1;
        st[last] = twist(st[last], st[0], st[SHIFT_WORDS - 1]);
        self.index = 0;
    }
}

/// torch's float32 uniform from one 32-bit draw: its low 24 bits times 2^-24.
fn uniform24(r: u32) -> f32 {
    (r & 0x00ff_ffff) as f32 * (1.0 / 16_777_216.0)
}

/// MT19937's output tempering of a state word.
fn temper(mut y: u32) -> u32 {
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c_5680;
    y ^= (y << 15) & 0xefc6_0000;
    y ^ (y >> 18)
}

/// Which of torch's float32 Box–Muller kernels to reproduce for `numel >= 16` (see the module
/// docs). Draws of fewer than 16 values do not depend on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum NormalKernel {
    /// torch's AVX2 kernel as GCC builds it for torch's Linux x86-64 wheels: Cephes
    /// `log256_ps` / `sincos256_ps` with the mul/add pairs GCC fused into FMAs. What torch on
    /// Linux uses on every x86-64 CPU with AVX2 and FMA, AVX-512 ones included.
    #[default]
    Avx2Gcc,
    /// The same AVX2 kernel as MSVC builds it for torch's Windows wheels: no FP contraction,
    /// every `_mm256_mul_ps` / `_mm256_add_ps` rounded on its own. About 1% of the values
    /// differ from [`NormalKernel::Avx2Gcc`] in the last bit.
    Avx2Msvc,
    /// torch's scalar kernel (float `logf`, `cosf`, `sinf` from the C library), used by its
    /// DEFAULT capability; bit-exact only where our libm is the one torch calls (glibc here).
    Scalar,
}

/// A CPU `torch.Generator`: the MT19937 engine plus the cached second sample of the double
/// Box–Muller used by draws of fewer than 16 values.
#[derive(Clone, Debug)]
pub struct CpuGenerator {
    engine: Mt19937,
    next_double_normal: Option<f64>,
}

impl CpuGenerator {
    /// A generator after `torch.manual_seed(seed)` / `Generator().manual_seed(seed)`.
    pub fn new(seed: u64) -> Self {
        Self {
            engine: Mt19937::new(seed),
            next_double_normal: None,
        }
    }

    /// `generator.manual_seed(seed)`: a fresh engine and no cached normal sample.
    pub fn manual_seed(&mut self, seed: u64) {
        *self = Self::new(seed);
    }

    /// `generator.initial_seed()`.
    pub fn initial_seed(&self) -> u64 {
        self.engine.seed()
    }

    /// One 32-bit draw (`CPUGeneratorImpl::random`).
    pub fn random(&mut self) -> u32 {
        self.engine.next_u32()
    }

    /// Two 32-bit draws, the first one high (`CPUGeneratorImpl::random64`).
    pub fn random64(&mut self) -> u64 {
        let hi = self.engine.next_u32();
        let lo = self.engine.next_u32();
        (u64::from(hi) << 32) | u64::from(lo)
    }

    /// A float32 uniform in `[0, 1)`: the low 24 bits of one draw, times 2^-24.
    fn uniform_f32(&mut self) -> f32 {
        uniform24(self.random())
    }

    /// A float64 uniform in `[0, 1)`: the low 53 bits of [`CpuGenerator::random64`], times 2^-53.
    fn uniform_f64(&mut self) -> f64 {
        (self.random64() & ((1u64 << 53) - 1)) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    /// `at::normal_distribution<double>(0, 1)`: a cached sample if there is one, else a new
    /// Box–Muller pair whose sine half is cached.
    fn normal_f64(&mut self) -> f64 {
        if let Some(cached) = self.next_double_normal.take() {
            return affine_f64(cached);
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let radius = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * PI * u1;
        self.next_double_normal = Some(radius * theta.sin());
        affine_f64(radius * theta.cos())
    }

    /// `torch.randn(out.len(), generator=self)` into `out` (float32, contiguous), with torch's
    /// AVX2 kernel as built for Linux.
    pub fn randn_into(&mut self, out: &mut [f32]) {
        self.randn_into_with(out, NormalKernel::Avx2Gcc);
    }

    /// As [`CpuGenerator::randn_into`], with the given kernel for `out.len() >= 16`.
    pub fn randn_into_with(&mut self, out: &mut [f32], kernel: NormalKernel) {
        let n = out.len();
        if n < 16 {
            for v in out.iter_mut() {
                *v = self.normal_f64() as f32;
            }
            return;
        }
        self.engine.fill_with(out, uniform24);
        // The draws above are the generator's only state; the transform of each block of 16 is
        // independent of the others, so blocks are shared out over rayon's pool.
        out.par_chunks_mut(16 * BLOCKS_PER_TASK).for_each(|chunk| {
            for block in chunk.chunks_exact_mut(16) {
                box_muller_16(block, kernel);
            }
        });
        if n % 16 != 0 {
            let tail = &mut out[n - 16..];
            for v in tail.iter_mut() {
                *v = self.uniform_f32();
            }
            box_muller_16(tail, kernel);
        }
    }
}

/// `torch.manual_seed(seed); torch.randn(numel)` in float32 on the CPU, bit for bit (torch's
/// AVX2 kernel as built for Linux for `numel >= 16`; see the module docs).
pub fn randn(seed: u64, numel: usize) -> Vec<f32> {
    randn_with(seed, numel, NormalKernel::Avx2Gcc)
}

/// As [`randn`], with the given kernel for `numel >= 16`.
pub fn randn_with(seed: u64, numel: usize, kernel: NormalKernel) -> Vec<f32> {
    let mut out = vec![0.0; numel];
    CpuGenerator::new(seed).randn_into_with(&mut out, kernel);
    out
}

/// ComfyUI's initial noise (`comfy.sample.prepare_noise` without `batch_index`, as used by the
/// `RandomNoise` node and `KSampler`) for a float32 latent of `shape`, e.g.
/// `[b, 128, h / 16, w / 16]` for FLUX.2 [klein]: one `torch.randn` of the whole shape from
/// `torch.manual_seed(seed)`. Row-major, `shape.iter().product()` values. Seeds above 2^32 are
/// accepted and, as in torch, only their low 32 bits matter.
pub fn comfy_noise(seed: u64, shape: &[usize]) -> Vec<f32> {
    randn(seed, shape.iter().product())
}

/// As [`comfy_noise`], with the given kernel: [`NormalKernel::Avx2Msvc`] gives what ComfyUI
/// computes with torch's Windows wheels.
pub fn comfy_noise_with(seed: u64, shape: &[usize], kernel: NormalKernel) -> Vec<f32> {
    randn_with(seed, shape.iter().product(), kernel)
}

/// ComfyUI's `prepare_noise` for a latent that carries `batch_index` (set by latent batch,
/// "Latent From Batch" and rebatching nodes): from one generator seeded with `seed`, it draws
/// one sample of shape `[1, shape[1..]]` for every index `0..=max(batch_index)` in turn, and
/// output sample `k` is the one drawn for `batch_index[k]`. The result has
/// `batch_index.len()` samples (ComfyUI's batch size is that length, not `shape[0]`).
pub fn comfy_noise_batch_index(seed: u64, shape: &[usize], batch_index: &[usize]) -> Vec<f32> {
    let per_sample: usize = shape.iter().skip(1).product();
    let Some(&last) = batch_index.iter().max() else {
        return Vec::new();
    };
    let mut generator = CpuGenerator::new(seed);
    let mut sample = vec![0.0f32; per_sample];
    let mut out = vec![0.0f32; batch_index.len() * per_sample];
    for index in 0..=last {
        generator.randn_into(&mut sample);
        for (k, _) in batch_index.iter().enumerate().filter(|&(_, &b)| b == index) {
            out[k * per_sample..(k + 1) * per_sample].copy_from_slice(&sample);
        }
    }
    out
}

/// `transformation::normal(v, mean = 0, std = 1)`: `v * 1 + 0`, which turns `-0.0` into `+0.0`.
fn affine_f64(v: f64) -> f64 {
    v.mul_add(1.0, 0.0)
}

/// The Box–Muller transform of one block of 16 uniforms, in place (`NormalFill16`).
fn box_muller_16(block: &mut [f32], kernel: NormalKernel) {
    debug_assert_eq!(block.len(), 16);
    let (cos_half, sin_half) = block.split_at_mut(8);
    for (a, b) in cos_half.iter_mut().zip(sin_half.iter_mut()) {
        let (n1, n2) = match kernel {
            NormalKernel::Avx2Gcc => box_muller_avx2::<true>(*a, *b),
            NormalKernel::Avx2Msvc => box_muller_avx2::<false>(*a, *b),
            NormalKernel::Scalar => box_muller_scalar(*a, *b),
        };
        // `fma(n, std, mean)` with std = 1, mean = 0: exact, but `-0.0` becomes `+0.0`.
        *a = n1.mul_add(1.0, 0.0);
        *b = n2.mul_add(1.0, 0.0);
    }
}

/// One lane of torch's scalar `NormalFill16<float>`: float `logf`, `cosf`, `sinf`; `θ` is
/// `2.0f * pi<double> * u2` evaluated in double and rounded to float.
fn box_muller_scalar(x1: f32, x2: f32) -> (f32, f32) {
    let u1 = 1.0 - x1;
    let radius = (-2.0 * u1.ln()).sqrt();
    let theta = (2.0 * PI * f64::from(x2)) as f32;
    (radius * theta.cos(), radius * theta.sin())
}

/// One lane of torch's AVX2 `NormalFill16<float, true>`, before the final `fma(n, std, mean)`;
/// `FUSED`: with GCC's FMAs (Linux wheels), else every operation rounded (Windows wheels).
fn box_muller_avx2<const FUSED: bool>(x1: f32, x2: f32) -> (f32, f32) {
    const TWO_PI: f32 = f32::from_bits(0x40c9_0fdb); // (float)(2 * pi)
    let u1 = 1.0 - x1;
    let radius = (-2.0 * cephes_log::<FUSED>(u1)).sqrt();
    let theta = TWO_PI * x2;
    let (sin, cos) = cephes_sincos::<FUSED>(theta);
    (radius * cos, radius * sin)
}

/// `a * b + c`: one rounding where GCC fused the source's `_mm256_mul_ps` and `_mm256_add_ps`
/// into an FMA (`FUSED`), two where they stay apart (MSVC). Rust itself never contracts.
fn mul_add<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FUSED {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

// The constants of avx_mathfun.h, as the float bit patterns in torch 2.15.0's binary.
const LOG_P: [f32; 9] = [
    f32::from_bits(0x3d90_21bb), //  7.0376836292e-2
    f32::from_bits(0xbdeb_d1b8), // -1.1514610310e-1
    f32::from_bits(0x3def_251a), //  1.1676998740e-1
    f32::from_bits(0xbdfe_5d4f), // -1.2420140846e-1
    f32::from_bits(0x3e11_e9bf), //  1.4249322787e-1
    f32::from_bits(0xbe2a_ae50), // -1.6668057665e-1
    f32::from_bits(0x3e4c_ceac), //  2.0000714765e-1
    f32::from_bits(0xbe7f_fffc), // -2.4999993993e-1
    f32::from_bits(0x3eaa_aaaa), //  3.3333331174e-1
];
const LOG_Q1: f32 = f32::from_bits(0xb95e_8083); // -2.12194440e-4
const LOG_Q2: f32 = f32::from_bits(0x3f31_8000); // 0.693359375
const SQRT_HALF: f32 = f32::from_bits(0x3f35_04f3); // 0.707106781186547524
const MIN_NORM_POS: f32 = f32::from_bits(0x0080_0000);
const FOUR_OVER_PI: f32 = f32::from_bits(0x3fa2_f983); // 1.27323954473516
const MINUS_DP1: f32 = f32::from_bits(0xbf49_0000); // -0.78515625
const MINUS_DP2: f32 = f32::from_bits(0xb97d_a000); // -2.4187564849853515625e-4
const MINUS_DP3: f32 = f32::from_bits(0xb322_2169); // -3.77489497744594108e-8
const SINCOF: [f32; 3] = [
    f32::from_bits(0xb94c_a1f9), // -1.9515295891e-4
    f32::from_bits(0x3c08_839e), //  8.3321608736e-3
    f32::from_bits(0xbe2a_aaa3), // -1.6666654611e-1
];
const COSCOF: [f32; 3] = [
    f32::from_bits(0x37cc_f5ce), //  2.443315711809948e-5
    f32::from_bits(0xbab6_061a), // -1.388731625493765e-3
    f32::from_bits(0x3d2a_aaa5), //  4.166664568298827e-2
];

/// One lane of `log256_ps`; `FUSED`: with the FMAs GCC formed in torch 2.15.0's Linux build.
fn cephes_log<const FUSED: bool>(input: f32) -> f32 {
    // `_CMP_LE_OS` is false for NaN, and `max_ps` then returns its second operand: NaN is
    // treated as the smallest normal, as there.
    let invalid = input <= 0.0;
    let x = if input > MIN_NORM_POS {
        input
    } else {
        MIN_NORM_POS
    };
    let bits = x.to_bits();
    let exponent = ((bits >> 23) as i32 - 0x7f) as f32 + 1.0;
    // The mantissa as a float in [0.5, 1).
    let x = f32::from_bits((bits & !0x7f80_0000) | 0.5f32.to_bits());
    let below = x < SQRT_HALF;
    let kept = if below { x } else { 0.0 };
    let e = exponent - if below { 1.0 } else { 0.0 };
    let x = (x + -1.0) + kept;
    let z = x * x;
    let mut y = LOG_P[0];
    for &p in &LOG_P[1..] {
        y = mul_add::<FUSED>(y, x, p);
    }
    let y = y * x;
    let y = mul_add::<FUSED>(y, z, e * LOG_Q1);
    let y = mul_add::<FUSED>(-z, 0.5, y); // y - z * 0.5
    let result = mul_add::<FUSED>(e, LOG_Q2, x + y);
    if invalid {
        f32::from_bits(0xffff_ffff) // the all-ones mask OR-ed in: a NaN
    } else {
        result
    }
}

/// One lane of `sincos256_ps` (`(sin, cos)`); `FUSED`: with the FMAs GCC formed in torch
/// 2.15.0's Linux build.
fn cephes_sincos<const FUSED: bool>(input: f32) -> (f32, f32) {
    let sign_in = input.to_bits() & 0x8000_0000;
    let x = input.abs();
    // cvttps2dq truncates; out-of-range lanes become i32::MIN there, unreachable for θ < 2π.
    let j = (((x * FOUR_OVER_PI) as i32).wrapping_add(1)) & !1;
    let y = j as f32;
    let swap_sign_sin = ((j & 4) as u32) << 29;
    let use_sin_poly = j & 2 == 0; // for the sine; the cosine takes the other polynomial
    let sign_cos = ((!j.wrapping_sub(2) & 4) as u32) << 29;
    let sign_sin = sign_in ^ swap_sign_sin;

    let x = mul_add::<FUSED>(y, MINUS_DP1, x);
    let x = mul_add::<FUSED>(y, MINUS_DP2, x);
    let x = mul_add::<FUSED>(y, MINUS_DP3, x);
    let z = x * x;

    let c = mul_add::<FUSED>(COSCOF[0], z, COSCOF[1]);
    let c = mul_add::<FUSED>(c, z, COSCOF[2]);
    let c = c * z;
    let c = mul_add::<FUSED>(c, z, -(z * 0.5));
    let c = c + 1.0;

    let s = mul_add::<FUSED>(SINCOF[0], z, SINCOF[1]);
    let s = mul_add::<FUSED>(s, z, SINCOF[2]);
    let s = s * z;
    let s = mul_add::<FUSED>(x, s, x);

    // The blend exactly as written there: masked values, differences and sums.
    let (sin_from_s, sin_from_c) = if use_sin_poly { (s, 0.0) } else { (0.0, c) };
    let s_rest = s - sin_from_s;
    let c_rest = c - sin_from_c;
    let sin = sin_from_c + sin_from_s;
    let cos = c_rest + s_rest;
    (
        f32::from_bits(sin.to_bits() ^ sign_sin),
        f32::from_bits(cos.to_bits() ^ sign_cos),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transform shared out over rayon's pool gives what one pass over the blocks gives,
    /// across task boundaries and with the overlapping tail block, for every kernel.
    #[test]
    fn parallel_box_muller_matches_one_pass() {
        let n = 16 * BLOCKS_PER_TASK * 2 + 16 * 3 + 5;
        for kernel in [
            NormalKernel::Avx2Gcc,
            NormalKernel::Avx2Msvc,
            NormalKernel::Scalar,
        ] {
            let mut generator = CpuGenerator::new(20_261_204);
            let mut want = vec![0.0f32; n];
            for v in want.iter_mut() {
                *v = generator.uniform_f32();
            }
            for block in want.chunks_exact_mut(16) {
                box_muller_16(block, kernel);
            }
            let tail = &mut want[n - 16..];
            for v in tail.iter_mut() {
                *v = generator.uniform_f32();
            }
            box_muller_16(tail, kernel);
            let got = randn_with(20_261_204, n, kernel);
            let same = got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{kernel:?}: the parallel transform changed values");
        }
    }

    #[test]
    fn block_fill_gives_the_same_outputs_as_single_draws() {
        // Starting mid-block, across three regenerations, ending mid-block.
        let mut one = Mt19937::new(20_261_204);
        let mut block = one.clone();
        for _ in 0..100 {
            assert_eq!(one.next_u32(), block.next_u32());
        }
        let want: Vec<u32> = (0..3 * STATE_WORDS + 17).map(|_| one.next_u32()).collect();
        let mut got = vec![0u32; want.len()];
        block.fill_with(&mut got, |r| r);
        assert_eq!(got, want);
        assert_eq!(one.next_u32(), block.next_u32());
    }

    #[test]
    fn mt19937_matches_the_reference_outputs() {
        // The reference implementation's default seed 5489: the first outputs and the 10000th
        // (C++11 requires 4123659995 for std::mt19937's 10000th output).
        let mut mt = Mt19937::new(5489);
        let first: Vec<u32> = (0..4).map(|_| mt.next_u32()).collect();
        assert_eq!(
            first,
            [3_499_211_612, 581_869_302, 3_890_346_734, 3_586_334_585]
        );
        let mut mt = Mt19937::new(5489);
        let ten_thousandth = (0..10_000).map(|_| mt.next_u32()).last();
        assert_eq!(ten_thousandth, Some(4_123_659_995));
    }

    #[test]
    fn seeds_are_truncated_to_32_bits() {
        let mut a = Mt19937::new(42);
        let mut b = Mt19937::new(42 + (7u64 << 32));
        assert_eq!(b.seed(), 42 + (7u64 << 32));
        for _ in 0..1300 {
            assert_eq!(a.next_u32(), b.next_u32());
        }
        assert_eq!(randn(u64::MAX, 40), randn(u64::from(u32::MAX), 40));
    }

    #[test]
    fn manual_seed_zero_gives_torchs_well_known_first_values() {
        // torch.manual_seed(0); torch.randn(20) prints -1.1258, -1.1524, -0.2506, -0.4339, ...
        let v = randn(0, 20);
        let expected = [-1.1258f32, -1.1524, -0.2506, -0.4339, 0.5988, -1.5551];
        for (got, want) in v.iter().zip(expected) {
            assert!((got - want).abs() < 5e-5, "{got} vs {want}");
        }
    }

    #[test]
    fn cephes_functions_are_close_to_libm() {
        for i in 1..=1000 {
            let u = i as f32 / 1000.0;
            for log in [cephes_log::<true>(u), cephes_log::<false>(u)] {
                assert!((log - u.ln()).abs() <= 2.0 * f32::EPSILON * u.ln().abs().max(1.0));
            }
            let theta = u * std::f32::consts::TAU;
            for (s, c) in [cephes_sincos::<true>(theta), cephes_sincos::<false>(theta)] {
                assert!((s - theta.sin()).abs() < 1e-6 && (c - theta.cos()).abs() < 1e-6);
            }
        }
        assert!(cephes_log::<true>(0.0).is_nan() && cephes_log::<true>(-1.0).is_nan());
        assert_eq!(cephes_log::<true>(1.0), 0.0);
    }

    #[test]
    fn batch_index_draws_samples_in_index_order_from_one_generator() {
        let shape = [3, 128, 2, 3];
        let per = 128 * 2 * 3;
        let whole = comfy_noise(9, &[3, 128, 2, 3]);
        // Indices 0, 1, 2: the same as one draw of the whole batch (per-sample size % 16 == 0).
        assert_eq!(comfy_noise_batch_index(9, &shape, &[0, 1, 2]), whole);
        let picked = comfy_noise_batch_index(9, &shape, &[2, 0, 2]);
        assert_eq!(picked[..per], whole[2 * per..]);
        assert_eq!(picked[per..2 * per], whole[..per]);
        assert_eq!(picked[2 * per..], whole[2 * per..]);
    }
}
