//! Which instruction set the kernels use: detected once at run time, optionally capped.
//!
//! The engine's kernels come in three builds: portable Rust (any CPU), AVX2 + FMA, and AVX-512F
//! (x86-64). Each call site picks the best one [`active`] allows. The cap ([`set_limit`]) exists
//! for comparisons — `grucell bench --isa avx2` on an AVX-512 machine times the AVX2 kernels in the
//! same binary — and for users who want the narrower kernels (AVX-512 lowers the clock of some
//! older Intel CPUs). Results of different builds agree to float32 round-off, not bit for bit:
//! the AVX-512 batch-1 kernel sums `k` in two interleaved halves.
//!
//! ```
//! use grucell::engine::isa::{self, Isa};
//!
//! let before = isa::active();
//! isa::set_limit(Isa::Portable);
//! assert_eq!(isa::active(), Isa::Portable);
//! isa::set_limit(Isa::Avx512); // no cap beyond what the CPU has
//! assert_eq!(isa::active(), before);
//! assert!("avx2".parse::<Isa>().is_ok() && "sse".parse::<Isa>().is_err());
//! ```

use crate::error::ConfigError;
use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction-set level of the engine's kernels, in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable Rust, vectorized by the compiler for the build's baseline target.
    Portable = 0,
    /// x86-64 AVX2 with FMA: 8-lane `f32` registers.
    Avx2Fma = 1,
    /// x86-64 AVX-512F: 16-lane `f32` registers (the recurrent products and the gate math).
    Avx512 = 2,
}

impl Isa {
    /// The name [`std::str::FromStr`] accepts: `portable`, `avx2` or `avx512`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2Fma => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    fn from_u8(v: u8) -> Isa {
        match v {
            0 => Isa::Portable,
            1 => Isa::Avx2Fma,
            _ => Isa::Avx512,
        }
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Isa {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Isa, ConfigError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "portable" | "generic" => Ok(Isa::Portable),
            "avx2" | "avx2fma" => Ok(Isa::Avx2Fma),
            "avx512" | "avx512f" => Ok(Isa::Avx512),
            _ => Err(ConfigError::invalid("isa", s, "portable, avx2 or avx512")),
        }
    }
}

/// The best level this CPU runs (the standard library caches the feature checks).
#[inline]
pub fn detected() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            return Isa::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Isa::Avx2Fma;
        }
    }
    Isa::Portable
}

static LIMIT: AtomicU8 = AtomicU8::new(Isa::Avx512 as u8);

/// Caps the level the kernels use from now on, process-wide (a cap above [`detected`] has no
/// effect). Products already running finish with the level they started with.
pub fn set_limit(max: Isa) {
    LIMIT.store(max as u8, Ordering::Relaxed);
}

/// The level the kernels use: [`detected`], capped by [`set_limit`].
#[inline]
pub fn active() -> Isa {
    detected().min(Isa::from_u8(LIMIT.load(Ordering::Relaxed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_names_say_what_is_accepted() {
        for isa in [Isa::Portable, Isa::Avx2Fma, Isa::Avx512] {
            assert_eq!(isa.name().parse::<Isa>(), Ok(isa));
            assert_eq!(isa.to_string(), isa.name());
        }
        let e = "neon".parse::<Isa>().unwrap_err().to_string();
        assert!(e.contains("neon") && e.contains("avx512"), "{e}");
    }

    #[test]
    fn levels_are_ordered() {
        assert!(Isa::Portable < Isa::Avx2Fma && Isa::Avx2Fma < Isa::Avx512);
        assert!(active() <= detected());
    }
}
