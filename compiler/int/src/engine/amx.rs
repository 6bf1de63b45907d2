//! The AMX-INT8 kernels of the 8-bit convs: ungrouped 1x1 convs
//! ([`gemm_tiles`], from `gemm::gemm_bytes`) and direct k x k convs
//! ([`direct_tiles`], from `direct::conv_direct_madd`).
//!
//! AMX computes on tiles, eight registers of up to 16 rows x 64 bytes
//! (`tmm0`-`tmm7`). `tdpbsud C, A, B` adds to the 16 x 16 i32 tile `C` the
//! products of the 16 x 64 s8 tile `A` and the u8 tile `B`, whose row `j`
//! holds quad `j` of the 64 inputs for 16 columns (4 bytes each):
//! `C[r][n] += sum_i A[r][i] * B[i / 4][4 n + i % 4]`, 16,384 exact
//! products into wrapping i32 per instruction. Here `A` is a conv's weights
//! (16 output channels x 64 input channels, s8), `B` its operand as
//! [`pack_quads16`](super::gemm) lays it out with blocks of 16 positions (u8
//! quads of input channels, offset by `z`), and `C` sixteen channels x
//! sixteen positions of sums: the same operand bytes and the same
//! `z * sum(w)` correction as the VNNI kernel's `vpdpbusd`, so the same
//! sums. A direct conv's `B` tiles are read straight from its layout (the
//! rows of a tile `cols` words apart, see [`DirectTiles`]). Per pass two
//! tiles of channels x two tiles of positions (`tmm0`-`tmm3`), the weights
//! in `tmm4`/`tmm5`, the operand in `tmm6`/`tmm7` ([`passes`]). A 1x1 conv
//! of at most 64 input channels configures its `A` tiles `4 kq` bytes wide
//! and its `B` tiles `kq` rows high (`kq` quads, [`tile_quads`]), and keeps
//! a pair of channel tiles' weights in `tmm4`/`tmm5` over all the passes
//! of that pair; the sums go
//! through memory (a 4 KiB buffer) into the same 512-bit epilogue as the
//! VNNI kernel's (`BlockOut::finish_pair`).
//!
//! The instructions are written with `asm!` (Rust has no stable AMX
//! intrinsics); the tile registers are used by this module only, configured
//! at the start of each call (`ldtilecfg`) and released at its end
//! (`tilerelease`), so no tile state outlives a call.

/// Quads of input channels per position in the operand and the weight
/// tiles: `k.div_ceil(4)` where that is at most one tile (16 quads, 64
/// channels: the tiles are configured that narrow, so a 1x1 conv of 24
/// channels loads and multiplies 6 quads, not 16), else rounded up to
/// whole tiles; the weights of the quads past `k` are zero.
pub(super) fn tile_quads(k: usize) -> usize {
    match k.div_ceil(4) {
        kq @ 0..=16 => kq.max(1),
        kq => kq.div_ceil(16) * 16,
    }
}

/// Length of [`weight_tiles`]: `m` rounded up to 16 rows of
/// [`tile_quads`]`(k)` quads.
pub(super) fn weight_tiles_len(m: usize, k: usize) -> usize {
    m.div_ceil(16) * 16 * tile_quads(k) * 4
}

/// `m` rows of `k` weights (each in `-128..=127`) as the `A` tiles: row
/// `r`, input `i` at byte `r * 4 tile_quads(k) + i`, zero past `k` and in
/// the rows past `m`.
pub(super) fn weight_tiles(w: &[i32], m: usize, k: usize) -> Vec<i8> {
    let stride = tile_quads(k) * 4;
    let mut t = vec![0i8; weight_tiles_len(m, k)];
    for (r, row) in w.chunks_exact(k.max(1)).take(m).enumerate() {
        for (i, &x) in row.iter().enumerate() {
            t[r * stride + i] = x as i8;
        }
    }
    t
}

/// Whether this CPU has AMX-TILE and AMX-INT8 and the OS lets this
/// process use the tile data (asked once per process). The caller has
/// checked AVX-512 (so CPUID leaf 7 exists).
pub(super) fn permitted() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        static PERMITTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *PERMITTED.get_or_init(|| {
            // CPUID leaf 7, sub-leaf 0: EDX bit 24 AMX-TILE, bit 25 AMX-INT8.
            #[allow(unused_unsafe)]
            // SAFETY: CPUID is available on every x86-64 CPU.
            let id = unsafe { std::arch::x86_64::__cpuid_count(7, 0) };
            if (id.edx >> 24) & 3 != 3 {
                return false;
            }
            // arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA): 0 where
            // the kernel supports the tile state and grants it.
            let ret: i64;
            // SAFETY: the arch_prctl system call (158) with these
            // arguments only changes which XSAVE states this process may
            // use; it reads and writes no memory of ours. `syscall`
            // clobbers rcx and r11.
            unsafe {
                std::arch::asm!(
                    "syscall",
                    inlateout("rax") 158i64 => ret,
                    in("rdi") 0x1023i64,
                    in("rsi") 18i64,
                    lateout("rcx") _,
                    lateout("r11") _,
                    options(nostack),
                );
            }
            ret == 0
        })
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        false
    }
}

/// A tile configuration (`ldtilecfg`'s 64 bytes).
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

/// Four 16 x 16 tiles of i32 sums, where `tilestored` writes them.
#[repr(C, align(64))]
struct Sums([[i32; 256]; 4]);

/// `m` output rows of sums over `p` positions: the weight tiles `a`
/// ([`weight_tiles`]) times the operand `x` (u8 quads in blocks of 16
/// positions, [`tile_quads`]`(k)` quads per block, as `pack_quads16` lays
/// them out with `w = 16`: positions past `p` hold the offset `z`), less
/// `comp` per row (`z * sum(w)`; `None` where `z` is 0), into `fin`'s
/// epilogue and store.
///
/// # Safety
///
/// AMX-TILE and AMX-INT8 permitted ([`permitted`]), AVX-512 F, BW (and
/// AVX2); `a.len() == weight_tiles_len(m, k)`, `x.len() >=
/// p.div_ceil(16) * tile_quads(k) * 32`, `comp` (where given) `>= m`
/// values, and `fin` takes `m` rows of `p` positions.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512bw")]
pub(super) unsafe fn gemm_tiles(
    a: &[i8],
    m: usize,
    k: usize,
    x: &[i16],
    p: usize,
    comp: Option<&[i32]>,
    fin: &mut super::gemm::BlockOut,
) {
    let kt = tile_quads(k);
    // Quads per chunk (the `A` tiles' columns, the `B` tiles' rows): every
    // quad where they fit one tile, else 16.
    let kr = kt.min(16);
    let (tiles, blocks8) = (p.div_ceil(16), p.div_ceil(8));
    // Bytes between rows: a weight row, a quad of the operand.
    let (sa, sb) = (kt * 4, 64usize);
    assert!(a.len() == weight_tiles_len(m, k) && x.len() >= tiles * kt * 32);
    assert!(comp.is_none_or(|c| c.len() >= m));
    // SAFETY: AVX-512 F is one of this function's features.
    let r16 = unsafe { fin.regs16() };
    // With one chunk (`k <= 64`) the weight tiles of a row pair stay in
    // `tmm4` and `tmm5` from its first pass (`q` 0) to its last: nothing
    // else loads them.
    let keep_a = kt == kr;
    let compute = |ps: Pass| {
        for c in 0..kt / kr {
            // SAFETY (the tile loads): weight rows `o..o + 16` (and `o +
            // 16..o + 32` with `two_rows`, `o + 16 < m`) lie inside `a`'s
            // `m.div_ceil(16) * 16` rows of `sa` bytes, chunk `c` at bytes
            // `4 kr c..4 kr (c + 1) <= sa`; operand blocks `q` (and `q + 1
            // < tiles`) have `kt` quads of 64 bytes, quads `kr c..kr (c +
            // 1) <= kt` read (asserted lengths; `kr` divides `kt`).
            unsafe {
                let a0 = a.as_ptr().add(ps.o * sa + 4 * kr * c);
                let b0 = (x.as_ptr() as *const u8).add((ps.q * kt + kr * c) * 64);
                step(
                    (a0, a0.wrapping_add(16 * sa)),
                    sa,
                    (b0, b0.wrapping_add(kt * 64)),
                    sb,
                    ps.two_rows,
                    ps.two_pos,
                    !(keep_a && ps.q > 0),
                );
            }
        }
    };
    // Tile `2 rt + pt`: channels `o + 16 rt..`, positions `16 (q + pt)..`
    // (blocks of eight `2 (q + pt)` and the next, where there is one).
    let finish = |sums: &Sums, ps: Pass| {
        for rt in 0..1 + ps.two_rows as usize {
            for pt in 0..1 + ps.two_pos as usize {
                let g0 = 2 * (ps.q + pt);
                let g = (g0, if g0 + 1 < blocks8 { g0 + 1 } else { g0 });
                let tile = &sums.0[2 * rt + pt];
                // SAFETY: this function's features; rows `< m`, blocks `<
                // p.div_ceil(8)`: `fin`'s bounds.
                unsafe { emit(tile, 16, ps.o + 16 * rt, m, comp, g, r16.as_ref(), fin) };
            }
        }
    };
    // SAFETY: the tile configuration of `compute`'s tiles.
    unsafe { passes(&config(16, kr), m, tiles, compute, finish) };
}

/// Where one pass of the tile kernels works: channels from `o` (16, or 32
/// with `two_rows`), position tiles `q` (and `q + 1` with `two_pos`).
#[derive(Clone, Copy)]
struct Pass {
    o: usize,
    q: usize,
    two_rows: bool,
    two_pos: bool,
}

/// The passes of a tile kernel over `m` channels and `tiles` tiles of
/// positions, two x two tiles each: the tiles configured as `cfg`, then per
/// pass `tmm0`-`tmm3` zeroed, `compute` (the tile products into them), the
/// sums stored and `finish` (the epilogue). The tile state is released at
/// the end. (Running each pass's epilogue while the next pass's products
/// are under way, from a second buffer, measured no faster.)
///
/// # Safety
///
/// AMX-TILE and AMX-INT8 permitted; `compute` uses only `tmm0`-`tmm7` as
/// `cfg` configures them, and its loads are its own to justify.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn passes(
    cfg: &TileConfig,
    m: usize,
    tiles: usize,
    mut compute: impl FnMut(Pass),
    mut finish: impl FnMut(&Sums, Pass),
) {
    use std::arch::asm;
    let mut sums = Sums([[0; 256]; 4]);
    // SAFETY: the configuration is 64 readable, aligned bytes.
    unsafe { asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly)) };
    let mut o = 0;
    while o < m {
        let two_rows = o + 16 < m;
        for q in (0..tiles).step_by(2) {
            let ps = Pass {
                o,
                q,
                two_rows,
                two_pos: q + 1 < tiles,
            };
            // SAFETY: the tiles are configured; zeroing touches no memory.
            unsafe {
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    options(nostack, nomem)
                )
            };
            compute(ps);
            // SAFETY: the tiles are configured (at most 16 rows of 64
            // bytes).
            unsafe { store_sums(&mut sums, ps.two_rows, ps.two_pos) };
            finish(&sums, ps);
        }
        o += if two_rows { 32 } else { 16 };
    }
    // SAFETY: releases the tile state this call configured.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// A direct k x k conv's weights as `A` tiles, in the order of
/// `direct.rs`'s tap list for the tiles: with stride 1 the taps are the
/// kernel's columns `kx` and the `K` rows of a tap are `(ky, quad)` pairs,
/// `j = ky * cp + c` (`cp` quads of input channels), which the layout
/// puts `cols` words apart; with a larger stride the taps are `(ky, kx)`
/// and row `j` is quad `j`. Per output channel `o` (rounded up to 16 rows),
/// tap `t` and row `j < jpad` (the rows rounded up to `chunks * kr`) four
/// bytes at `((o * taps + t) * jpad + j) * 4`; zero past `cin` and `cout`.
/// One `A` tile (16 channels, `kr` rows of one tap) is 16 rows of `4 kr`
/// bytes, `taps * jpad * 4` apart.
pub(super) struct DirectTiles {
    pub(super) bytes: Vec<i8>,
    /// Rows per chunk (the `K` of one `tdpbsud`, at most 16 quads).
    pub(super) kr: usize,
    /// Rows per tap in all: `kr` times the number of chunks.
    pub(super) jpad: usize,
    /// Quad planes the layout needs per row and phase (with a stride over
    /// 1: `jpad`, so a chunk's rows past the channels read the border).
    pub(super) planes: usize,
}

impl DirectTiles {
    /// From a direct conv (weights `[cout][cin][k][k]`, each in
    /// `-128..=127`).
    pub(super) fn new(l: &crate::plan::ConvLayer) -> DirectTiles {
        let (k, cp) = (l.kernel, l.cin.div_ceil(4));
        let (taps, rows) = match l.stride {
            1 => (k, k * cp),
            _ => (k * k, cp),
        };
        let chunks = rows.div_ceil(16).max(1);
        let kr = rows.div_ceil(chunks);
        let jpad = kr * chunks;
        let mut bytes = vec![0i8; l.cout.div_ceil(16) * 16 * taps * jpad * 4];
        for o in 0..l.cout {
            for c in 0..l.cin {
                for ky in 0..k {
                    for kx in 0..k {
                        let (t, j) = match l.stride {
                            1 => (kx, ky * cp + c / 4),
                            _ => (ky * k + kx, c / 4),
                        };
                        bytes[((o * taps + t) * jpad + j) * 4 + c % 4] =
                            l.weights[((o * l.cin + c) * k + ky) * k + kx] as i8;
                    }
                }
            }
        }
        let planes = if l.stride == 1 { cp } else { jpad };
        DirectTiles {
            bytes,
            kr,
            jpad,
            planes,
        }
    }
}

/// A tile configuration: `C` tiles (`tmm0`-`tmm3`) 16 rows of `n` i32, `A`
/// tiles (`tmm4`, `tmm5`) 16 rows of `kr` quads, `B` tiles (`tmm6`,
/// `tmm7`) `kr` rows of `n` quads.
fn config(n: usize, kr: usize) -> TileConfig {
    let mut c = [0u8; 64];
    c[0] = 1;
    for t in 0..8 {
        let (rows, colsb) = match t {
            0..=3 => (16, 4 * n),
            4 | 5 => (16, 4 * kr),
            _ => (kr, 4 * n),
        };
        c[16 + 2 * t] = colsb as u8;
        c[48 + t] = rows as u8;
    }
    TileConfig(c)
}

/// The direct conv of `direct.rs`'s 8-bit layout in tiles: `cout` output
/// channels over `oh x ow` positions (`ow` a multiple of 8), each tile of
/// positions `n` consecutive ones of an output row (16 where `ow` is a
/// multiple of 16, else 8), summed over every tap and chunk of rows: the
/// `A` tile of `w` ([`DirectTiles`]) times the `B` tile of `kr` rows
/// (`qs` words apart) read at the tile's first position plus the tap's
/// offset (`taps[t]`, in words, of row 0; output row `y` starts `y *
/// row_step` words in); less `comp` per row (`None`: zero), into `fin`.
///
/// # Safety
///
/// AMX-TILE and AMX-INT8 permitted ([`permitted`]), AVX-512 F, BW (and
/// AVX2); `w` from [`DirectTiles::new`] for this conv; for every output
/// row `y < oh`, position `i < ow` (a multiple of `n`), tap offset and
/// row `j < w.jpad`, the `n` words at `y * row_step + i + off + j * qs`
/// lie inside `padded` (as words: two i16 each); `comp` (where given)
/// `>= cout` values;
/// `fin` takes `cout` rows of `oh * ow`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512bw")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn direct_tiles(
    w: &DirectTiles,
    cout: usize,
    [oh, ow]: [usize; 2],
    padded: &[i16],
    row_step: usize,
    taps: &[usize],
    qs: usize,
    comp: Option<&[i32]>,
    fin: &mut super::gemm::BlockOut,
) {
    let n = if ow.is_multiple_of(16) { 16 } else { 8 };
    let (kr, jpad, k2) = (w.kr, w.jpad, taps.len());
    let tiles = oh * ow / n;
    // Bytes between the rows of an `A` tile, of a `B` tile.
    let (sa, sb) = (k2 * jpad * 4, qs * 4);
    assert!(ow.is_multiple_of(8) && comp.is_none_or(|c| c.len() >= cout));
    assert!(w.bytes.len() == cout.div_ceil(16) * 16 * k2 * jpad * 4);
    // SAFETY: AVX-512 F is one of this function's features.
    let r16 = unsafe { fin.regs16() };
    // The first word a position tile reads (tap offsets added).
    let at = |tile: usize| {
        let (y, i) = (tile * n / ow, tile * n % ow);
        y * row_step + i
    };
    let x = padded.as_ptr() as *const u8;
    let compute = |ps: Pass| {
        let (p0, p1) = (at(ps.q), if ps.two_pos { at(ps.q + 1) } else { at(ps.q) });
        for (t, &off) in taps.iter().enumerate() {
            for c in 0..jpad / kr {
                // SAFETY (the tile loads): the `A` rows `o..o + 16` (and
                // the next 16 with `two_rows`) lie inside `w.bytes` (rows
                // rounded up to 16), tap `t`'s chunk at bytes `4 (t jpad +
                // kr c)..+4 kr` of a row; the `B` rows are `kr c..kr c + kr
                // <= jpad` at `n` words from the tile's first word plus the
                // tap's offset, inside `padded` (the caller's bounds).
                unsafe {
                    let a0 = w
                        .bytes
                        .as_ptr()
                        .add((ps.o * k2 + t) * jpad * 4 + 4 * kr * c);
                    let a1 = a0.wrapping_add(16 * sa);
                    let b0 = x.add(4 * (p0 + off + kr * c * qs));
                    let b1 = x.add(4 * (p1 + off + kr * c * qs));
                    step((a0, a1), sa, (b0, b1), sb, ps.two_rows, ps.two_pos, true);
                }
            }
        }
    };
    let finish = |sums: &Sums, ps: Pass| {
        for rt in 0..1 + ps.two_rows as usize {
            for pt in 0..1 + ps.two_pos as usize {
                let g0 = (ps.q + pt) * n / 8;
                let g = (g0, if n == 16 { g0 + 1 } else { g0 });
                let tile = &sums.0[2 * rt + pt];
                // SAFETY: this function's features; rows `< cout`, blocks
                // `< oh * ow / 8`: `fin`'s bounds.
                unsafe { emit(tile, n, ps.o + 16 * rt, cout, comp, g, r16.as_ref(), fin) };
            }
        }
    };
    // SAFETY: the tile configuration of `compute`'s tiles.
    unsafe { passes(&config(n, kr), cout, tiles, compute, finish) };
}

/// One step of the tile kernels: the weight tile(s) at `a` (rows `sa`
/// bytes apart; the second with `two_rows`) times the operand tile(s) at
/// `b` (rows `sb` apart; the second with `two_pos`) added into `tmm0`
/// (`a.0` x `b.0`), `tmm1` (`a.0` x `b.1`), `tmm2` (`a.1` x `b.0`) and
/// `tmm3` (`a.1` x `b.1`). Without `load_a` the weight tiles are those
/// `tmm4` and `tmm5` hold (loaded by a step before, of the same weights).
///
/// # Safety
///
/// The tiles configured (`tmm4`-`tmm7` as `A` and `B` tiles), and every
/// row those tiles read from the pointers used readable; without `load_a`,
/// `tmm4` (and with `two_rows` `tmm5`) loaded from `a`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn step(
    (a0, a1): (*const i8, *const i8),
    sa: usize,
    (b0, b1): (*const u8, *const u8),
    sb: usize,
    two_rows: bool,
    two_pos: bool,
    load_a: bool,
) {
    use std::arch::asm;
    // SAFETY: the caller's (this function's `# Safety`).
    unsafe {
        match (load_a, two_rows) {
            (false, _) => {}
            (true, true) => asm!(
                "tileloadd tmm4, [{a0} + {sa}*1]",
                "tileloadd tmm5, [{a1} + {sa}*1]",
                a0 = in(reg) a0,
                a1 = in(reg) a1,
                sa = in(reg) sa,
                options(nostack, readonly)
            ),
            (true, false) => asm!(
                "tileloadd tmm4, [{a0} + {sa}*1]",
                a0 = in(reg) a0,
                sa = in(reg) sa,
                options(nostack, readonly)
            ),
        }
        match (two_rows, two_pos) {
            (true, true) => asm!(
                "tileloadd tmm6, [{b0} + {sb}*1]",
                "tileloadd tmm7, [{b1} + {sb}*1]",
                "tdpbsud tmm0, tmm4, tmm6",
                "tdpbsud tmm1, tmm4, tmm7",
                "tdpbsud tmm2, tmm5, tmm6",
                "tdpbsud tmm3, tmm5, tmm7",
                b0 = in(reg) b0,
                b1 = in(reg) b1,
                sb = in(reg) sb,
                options(nostack, readonly)
            ),
            (true, false) => asm!(
                "tileloadd tmm6, [{b0} + {sb}*1]",
                "tdpbsud tmm0, tmm4, tmm6",
                "tdpbsud tmm2, tmm5, tmm6",
                b0 = in(reg) b0,
                sb = in(reg) sb,
                options(nostack, readonly)
            ),
            (false, true) => asm!(
                "tileloadd tmm6, [{b0} + {sb}*1]",
                "tileloadd tmm7, [{b1} + {sb}*1]",
                "tdpbsud tmm0, tmm4, tmm6",
                "tdpbsud tmm1, tmm4, tmm7",
                b0 = in(reg) b0,
                b1 = in(reg) b1,
                sb = in(reg) sb,
                options(nostack, readonly)
            ),
            (false, false) => asm!(
                "tileloadd tmm6, [{b0} + {sb}*1]",
                "tdpbsud tmm0, tmm4, tmm6",
                b0 = in(reg) b0,
                sb = in(reg) sb,
                options(nostack, readonly)
            ),
        }
    }
}

/// The tiles of sums a pass used into `sums` (rows 64 bytes apart):
/// `tmm0`, `tmm1` with `two_pos`, `tmm2` with `two_rows`, `tmm3` with both.
///
/// # Safety
///
/// The tiles configured (at most 16 rows of 64 bytes each).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn store_sums(sums: &mut Sums, two_rows: bool, two_pos: bool) {
    use std::arch::asm;
    let s = 64usize;
    let [c0, c1, c2, c3] = &mut sums.0;
    // SAFETY: each tile writes at most 16 rows of 64 bytes, inside its
    // 1 KiB of `sums`.
    unsafe {
        asm!("tilestored [{c} + {s}*1], tmm0", c = in(reg) c0.as_mut_ptr(), s = in(reg) s, options(nostack));
        if two_pos {
            asm!("tilestored [{c} + {s}*1], tmm1", c = in(reg) c1.as_mut_ptr(), s = in(reg) s, options(nostack));
        }
        if two_rows {
            asm!("tilestored [{c} + {s}*1], tmm2", c = in(reg) c2.as_mut_ptr(), s = in(reg) s, options(nostack));
        }
        if two_rows && two_pos {
            asm!("tilestored [{c} + {s}*1], tmm3", c = in(reg) c3.as_mut_ptr(), s = in(reg) s, options(nostack));
        }
    }
}

/// One `C` tile of sums (16 channels from `o`, `n` positions: blocks of
/// eight `g.0` and, with `n = 16`, `g.1`), less `comp` per channel (`None`:
/// zero), into
/// `fin` eight channels at a time (channels `< m` only).
///
/// # Safety
///
/// AVX-512 F, BW (and AVX2); `comp` (where given) `>= m` values; `fin`
/// takes rows `< m` of
/// blocks `g.*`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512bw")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn emit(
    tile: &[i32; 256],
    n: usize,
    o: usize,
    m: usize,
    comp: Option<&[i32]>,
    g: (usize, usize),
    r16: Option<&super::gemm::Regs16>,
    fin: &mut super::gemm::BlockOut,
) {
    use std::arch::x86_64::*;
    if let Some(rg) = r16 {
        // SAFETY: the caller's bounds (rows `o..o + 16` below `m` only,
        // blocks `g`, `comp`).
        let t = super::gemm::TileRows {
            tile,
            n,
            o,
            rows: m.saturating_sub(o).min(16),
            g,
            comp,
        };
        if unsafe { fin.tile16(rg, &t) } {
            return;
        }
    }
    for h in 0..2 {
        let ob = o + 8 * h;
        if ob >= m {
            break;
        }
        let rows = (m - ob).min(8);
        let mut acc: [__m512i; 8] = std::array::from_fn(|r| {
            let row = tile[(8 * h + r) * 16..].as_ptr();
            // SAFETY: row `8 h + r < 16` of the tile: 16 aligned i32 (the
            // first 8 where `n = 8`, then copied into the high half, which
            // `finish_pair` does not store but takes in the largest |sum|).
            let v = unsafe {
                match n {
                    16 => _mm512_load_si512(row as *const _),
                    _ => _mm512_broadcast_i64x4(_mm256_load_si256(row as *const __m256i)),
                }
            };
            match (r < rows, comp) {
                (true, Some(c)) => _mm512_sub_epi32(v, _mm512_set1_epi32(c[ob + r])),
                _ => v,
            }
        });
        // SAFETY: rows `ob..ob + rows <= m`, blocks `g`: the caller's.
        unsafe { fin.finish_pair(r16, &mut acc, ob, rows, g) };
    }
}
