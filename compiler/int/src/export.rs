//! Export of an integer plan for hardware teams: JSON, NumPy `.npz`, or a C
//! header with a reference C inference.
//!
//! Input: an [`IntPlan`] and, optionally, test images with the logits the
//! Rust engine computed for them. Output: files in a directory (see
//! `docs/export.md` for every key and array):
//! - `json`: `<model>.int.json`, the whole plan (layers in execution order,
//!   integer weights, multipliers, biases, shifts, rounding, clamp ranges,
//!   tensor scales, clipping values, bit-widths, shapes).
//! - `npz`: `<model>.int.npz` (one `.npy` per array, little-endian) plus
//!   `<model>.int.json`, the same plan with every array replaced by the
//!   name of its `.npy` entry.
//! - `c`: `<model>_int.h` (the constants), `<model>_int.c` (a reference
//!   inference, `qatc_forward`, portable C99: 64-bit integers, and where a
//!   requantization's sums may pass 2^63 an exact 128-bit sum in two 64-bit
//!   halves, no `__int128`, so 32-bit and MSVC toolchains build it) and,
//!   with test images, `<model>_test.c` whose `main` runs them and checks
//!   the logits bit for bit against the Rust engine's.
//!
//! Invariants: the C code performs the engine's operations in the engine's
//! order (float stem summed in `double` in the same term order, every
//! division rounded as the plan says), so its logits equal the engine's bit
//! for bit; checked by `compiler/tests/int_export.rs`.
//!
//! The `.npz` writer is written here (a stored zip of `.npy` files, about a
//! hundred lines with the CRC) rather than taken from a crate: the format
//! subset is tiny and fixed, and `ndarray-npy`/`npyz` would pull an array
//! crate and a zip implementation into the compiler for it.

use super::fixed::{Div, Rounding};
use super::plan::{ConvInput, IntPlan, Layer, PoolKind};
use super::IntError;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The export formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    C,
    Npz,
    Json,
}

/// Test images to ship with a C export: `[C,H,W]` floats each and the logits
/// the engine gave them.
#[derive(Clone, Debug, Default)]
pub struct TestImages {
    pub images: Vec<Vec<f32>>,
    pub logits: Vec<Vec<f32>>,
}

fn io(path: &Path, e: std::io::Error) -> IntError {
    IntError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn write(path: PathBuf, bytes: &[u8]) -> Result<PathBuf, IntError> {
    std::fs::write(&path, bytes).map_err(|e| io(&path, e))?;
    Ok(path)
}

/// A C identifier from a layer name.
fn ident(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Writes the plan in `format` into `dir` (created if needed); returns the
/// files written.
pub fn write_export(
    plan: &IntPlan,
    dir: &Path,
    format: ExportFormat,
    tests: &TestImages,
) -> Result<Vec<PathBuf>, IntError> {
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let stem = ident(&plan.model);
    match format {
        ExportFormat::Json => {
            let text = serde_json::to_string(&plan_json(plan)).map_err(|e| IntError::Options {
                reason: e.to_string(),
            })?;
            Ok(vec![write(
                dir.join(format!("{stem}.int.json")),
                text.as_bytes(),
            )?])
        }
        ExportFormat::Npz => {
            let mut arrays: Vec<(String, Npy)> = Vec::new();
            let mut meta = plan_json(plan);
            hoist_arrays(&mut meta, "", &mut arrays);
            let text = serde_json::to_string_pretty(&meta).map_err(|e| IntError::Options {
                reason: e.to_string(),
            })?;
            let npz = zip_stored(
                &arrays
                    .iter()
                    .map(|(n, a)| (format!("{n}.npy"), a.bytes()))
                    .collect::<Vec<_>>(),
            );
            Ok(vec![
                write(dir.join(format!("{stem}.int.npz")), &npz)?,
                write(dir.join(format!("{stem}.int.json")), text.as_bytes())?,
            ])
        }
        ExportFormat::C => {
            let (h, c) = c_source(plan, &stem);
            let mut files = vec![
                write(dir.join(format!("{stem}_int.h")), h.as_bytes())?,
                write(dir.join(format!("{stem}_int.c")), c.as_bytes())?,
            ];
            if !tests.images.is_empty() {
                let t = c_test(plan, &stem, tests);
                files.push(write(dir.join(format!("{stem}_test.c")), t.as_bytes())?);
            }
            Ok(files)
        }
    }
}

/// The plan as JSON, with a format tag.
pub fn plan_json(plan: &IntPlan) -> Value {
    let mut v = serde_json::to_value(plan).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert("format".into(), json!("qatc-int"));
        m.insert("version".into(), json!(1));
    }
    v
}

/// A `.npy` array: int64 or float64, shape.
enum Npy {
    I64(Vec<i64>, Vec<usize>),
    F64(Vec<f64>, Vec<usize>),
}

impl Npy {
    fn bytes(&self) -> Vec<u8> {
        let (descr, shape, data): (&str, &Vec<usize>, Vec<u8>) = match self {
            Npy::I64(v, s) => ("<i8", s, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            Npy::F64(v, s) => ("<f8", s, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        };
        let dims = match shape.len() {
            1 => format!("({},)", shape[0]),
            _ => format!(
                "({})",
                shape
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
        // Magic (6) + version (2) + length (2) + header + '\n', padded to 64.
        let total = 10 + header.len() + 1;
        header.push_str(&" ".repeat((64 - total % 64) % 64));
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&data);
        out
    }
}

/// Replaces every numeric array of more than 4 elements in `v` by the name
/// of an `.npy` entry (its JSON path, dots between keys).
fn hoist_arrays(v: &mut Value, path: &str, out: &mut Vec<(String, Npy)>) {
    match v {
        Value::Object(m) => {
            // Conv weights keep their shape [cout, cin/groups, k, k].
            let dims =
                ["cout", "cin", "groups", "kernel"].map(|k| m.get(k).and_then(Value::as_u64));
            if let ([Some(co), Some(ci), Some(g), Some(k)], Some(Value::Array(a))) =
                (dims, m.get("weights"))
            {
                let shape = vec![
                    co as usize,
                    (ci / g.max(1)) as usize,
                    k as usize,
                    k as usize,
                ];
                let name = format!("{path}.weights");
                out.push((
                    name.clone(),
                    Npy::I64(a.iter().filter_map(Value::as_i64).collect(), shape),
                ));
                m.insert("weights".into(), json!({ "npy": format!("{name}.npy") }));
            }
            for (k, x) in m.iter_mut() {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                hoist_arrays(x, &p, out);
            }
        }
        Value::Array(a) => {
            let numeric = a.len() > 4 && a.iter().all(Value::is_number);
            if numeric {
                let name = path.to_string();
                let arr = if a.iter().all(|x| x.is_i64()) {
                    Npy::I64(a.iter().filter_map(Value::as_i64).collect(), vec![a.len()])
                } else {
                    Npy::F64(a.iter().filter_map(Value::as_f64).collect(), vec![a.len()])
                };
                out.push((name.clone(), arr));
                *v = json!({ "npy": format!("{name}.npy") });
            } else {
                for (i, x) in a.iter_mut().enumerate() {
                    hoist_arrays(x, &format!("{path}.{i}"), out);
                }
            }
        }
        _ => {}
    }
}

fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, t) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *t = c;
    }
    let mut crc = !0u32;
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// A zip archive of stored (uncompressed) entries, as `numpy.load` reads.
fn zip_stored(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let offset = out.len() as u32;
        let crc = crc32(data);
        let size = data.len() as u32;
        let n = name.len() as u16;
        // Local file header.
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        for x in [20u16, 0, 0, 0, 0x21] {
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        // Central directory entry.
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        for x in [20u16, 20, 0, 0, 0, 0x21] {
            central.extend_from_slice(&x.to_le_bytes());
        }
        central.extend_from_slice(&crc.to_le_bytes());
        central.extend_from_slice(&size.to_le_bytes());
        central.extend_from_slice(&size.to_le_bytes());
        central.extend_from_slice(&n.to_le_bytes());
        for x in [0u16, 0, 0, 0] {
            central.extend_from_slice(&x.to_le_bytes());
        }
        central.extend_from_slice(&0u32.to_le_bytes());
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let cd_offset = out.len() as u32;
    let cd_size = central.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    for x in [0u16, 0, entries.len() as u16, entries.len() as u16] {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.extend_from_slice(&cd_size.to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

fn c_array<T: std::fmt::Display>(out: &mut String, ty: &str, name: &str, v: &[T]) {
    let _ = write!(out, "static const {ty} {name}[{}] = {{", v.len().max(1));
    if v.is_empty() {
        out.push('0');
    }
    for (i, x) in v.iter().enumerate() {
        if i % 16 == 0 {
            out.push_str("\n    ");
        }
        let _ = write!(out, "{x}, ");
    }
    out.push_str("\n};\n");
}

/// `(f32 as bits)` so C reads back exactly the value.
fn c_float(x: f32) -> String {
    if x.is_finite() {
        format!("{x:e}f")
    } else {
        "0.0f".into()
    }
}

fn c_double(x: f64) -> String {
    format!("{x:e}")
}

fn div_code(d: Div) -> i32 {
    match d {
        Div::Trunc => 0,
        Div::Floor => 1,
        Div::Nearest => 2,
    }
}

const C_HELPERS: &str = r#"
/* Integer helpers: the engine's operations, in its order. */
static int64_t shift_round(int64_t x, int shift, int div) {
    if (shift == 0) return x;
    if (div == 1) return x >> shift;                      /* floor */
    if (div == 0) return (x + ((x >> 63) & ((INT64_C(1) << shift) - 1))) >> shift; /* trunc */
    {
        int64_t half = INT64_C(1) << (shift - 1);            /* nearest, halves away from 0 */
        return x >= 0 ? (x + half) >> shift : -((-x + half) >> shift);
    }
}
/* Exact 128-bit sums in portable C99 (no compiler extension: 32-bit and MSVC
   toolchains lack it): two's complement in two 64-bit halves. A wide
   requantization's products of a 64-bit source and a multiplier are summed
   here exactly, then rounded and saturated to 64 bits as the engine's i128. */
typedef struct { uint64_t lo, hi; } wide_t;
static wide_t wide_from(int64_t x) {
    wide_t r;
    r.lo = (uint64_t)x;
    r.hi = x < 0 ? UINT64_MAX : 0;
    return r;
}
static wide_t wide_add(wide_t a, wide_t b) {
    wide_t r;
    r.lo = a.lo + b.lo;
    r.hi = a.hi + b.hi + (r.lo < a.lo);
    return r;
}
static wide_t wide_neg(wide_t a) {
    wide_t r;
    r.lo = ~a.lo + 1;
    r.hi = ~a.hi + (r.lo == 0);
    return r;
}
static int wide_is_neg(wide_t a) { return (a.hi >> 63) != 0; }
/* |x| of an int64 as uint64 (INT64_MIN included) */
static uint64_t mag64(int64_t x) { return x < 0 ? ~(uint64_t)x + 1 : (uint64_t)x; }
/* a * b, exact: 32-bit limbs of the magnitudes, the sign applied last */
static wide_t wide_mul(int64_t a, int64_t b) {
    uint64_t x = mag64(a), y = mag64(b);
    uint64_t x0 = x & 0xffffffffu, x1 = x >> 32, y0 = y & 0xffffffffu, y1 = y >> 32;
    uint64_t p00 = x0 * y0, p01 = x0 * y1, p10 = x1 * y0, p11 = x1 * y1;
    uint64_t mid = (p00 >> 32) + (p01 & 0xffffffffu) + (p10 & 0xffffffffu);
    wide_t r;
    r.lo = (p00 & 0xffffffffu) | (mid << 32);
    r.hi = p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32);
    return (a < 0) != (b < 0) ? wide_neg(r) : r;
}
/* arithmetic shift right by 0 < s < 128 */
static wide_t wide_shr(wide_t a, int s) {
    wide_t r;
    uint64_t fill = wide_is_neg(a) ? UINT64_MAX : 0;
    if (s >= 64) {
        r.lo = s == 64 ? a.hi : (a.hi >> (s - 64)) | (fill << (128 - s));
        r.hi = fill;
    } else {
        r.lo = (a.lo >> s) | (a.hi << (64 - s));
        r.hi = (a.hi >> s) | (fill << (64 - s));
    }
    return r;
}
/* a * 2^s for 0 <= s < 128 (the caller knows it fits) */
static wide_t wide_shl(wide_t a, int s) {
    wide_t r;
    if (s == 0) return a;
    if (s >= 64) {
        r.hi = a.lo << (s - 64);
        r.lo = 0;
    } else {
        r.hi = (a.hi << s) | (a.lo >> (64 - s));
        r.lo = a.lo << s;
    }
    return r;
}
/* 2^s - 1 and 2^(s-1) for 0 < s < 128 */
static wide_t wide_low_mask(int s) {
    wide_t r;
    r.lo = s >= 64 ? UINT64_MAX : (UINT64_C(1) << s) - 1;
    r.hi = s > 64 ? (UINT64_C(1) << (s - 64)) - 1 : 0;
    return r;
}
static wide_t wide_pow2(int s) {
    wide_t r;
    r.lo = s < 64 ? UINT64_C(1) << s : 0;
    r.hi = s >= 64 ? UINT64_C(1) << (s - 64) : 0;
    return r;
}
static int64_t shift_round_wide(wide_t x, int shift, int div) {
    wide_t r = x;
    if (shift > 0) {
        if (div == 1) r = wide_shr(x, shift);                                   /* floor */
        else if (div == 0) r = wide_shr(wide_is_neg(x) ? wide_add(x, wide_low_mask(shift)) : x, shift); /* trunc */
        else if (wide_is_neg(x)) r = wide_neg(wide_shr(wide_add(wide_neg(x), wide_pow2(shift - 1)), shift));
        else r = wide_shr(wide_add(x, wide_pow2(shift - 1)), shift);             /* nearest, halves away from 0 */
    }
    /* saturate to int64: the high half must be the low half's sign */
    if (wide_is_neg(r)) {
        if (r.hi != UINT64_MAX || (r.lo >> 63) == 0) return INT64_MIN;
    } else if (r.hi != 0 || (r.lo >> 63) != 0) {
        return INT64_MAX;
    }
    return r.lo <= (uint64_t)INT64_MAX ? (int64_t)r.lo : -(int64_t)(~r.lo) - 1;
}
/* The seed's float32 fc sum (PyTorch's F.linear on float copies of the
   integers): four partial sums over i mod 4 with fused multiply-adds,
   combined as (s0 + s2) + (s1 + s3); the engine's seed_linear_f32. */
static float seed_linear(const int64_t *x, const int32_t *w, int n) {
    float s[4] = {0.0f, 0.0f, 0.0f, 0.0f}, a, b, r;
    for (int i = 0; i < n; i++) s[i % 4] = fmaf((float)x[i], (float)w[i], s[i % 4]);
    a = s[0] + s[2];
    b = s[1] + s[3];
    r = a + b;
    return r;
}
static int64_t div_round(int64_t x, int64_t n, int div) {
    if (div == 0) return x / n;
    if (div == 1) { int64_t q = x / n; return (x % n != 0 && x < 0) ? q - 1 : q; }
    return x >= 0 ? (x + n / 2) / n : -((-x + n / 2) / n);
}
static int64_t clamp64(int64_t x, int64_t lo, int64_t hi) { return x < lo ? lo : (x > hi ? hi : x); }

/* conv over int64 tensors [C,H,W]; weights [cout, cin/groups, k, k] */
static void conv_int(const int64_t *in, int cin, int ih, int iw, const int32_t *w, int cout,
                     int k, int s, int pad, int groups, int oh, int ow, int64_t *out) {
    int cin_g = cin / groups, cout_g = cout / groups;
    for (int o = 0; o < cout; o++) {
        int g = o / cout_g;
        for (int oy = 0; oy < oh; oy++) for (int ox = 0; ox < ow; ox++) {
            int64_t acc = 0;
            for (int c = 0; c < cin_g; c++) for (int ky = 0; ky < k; ky++) for (int kx = 0; kx < k; kx++) {
                int iy = oy * s + ky - pad, ix = ox * s + kx - pad;
                if (iy < 0 || iy >= ih || ix < 0 || ix >= iw) continue;
                acc += (int64_t)w[((o * cin_g + c) * k + ky) * k + kx] * in[((g * cin_g + c) * ih + iy) * iw + ix];
            }
            out[(o * oh + oy) * ow + ox] = acc;
        }
    }
}

/* conv of the float input, summed in double in the engine's term order */
static void conv_float(const float *in, int cin, int ih, int iw, const int32_t *w, int cout,
                       int k, int s, int pad, int groups, int oh, int ow, int nearest, double scale,
                       int64_t *out) {
    int cin_g = cin / groups, cout_g = cout / groups;
    for (int o = 0; o < cout; o++) {
        int g = o / cout_g;
        for (int oy = 0; oy < oh; oy++) for (int ox = 0; ox < ow; ox++) {
            double acc = 0.0;
            for (int c = 0; c < cin_g; c++) for (int ky = 0; ky < k; ky++) for (int kx = 0; kx < k; kx++) {
                int iy = oy * s + ky - pad, ix = ox * s + kx - pad;
                if (iy < 0 || iy >= ih || ix < 0 || ix >= iw) continue;
                acc = acc + (double)w[((o * cin_g + c) * k + ky) * k + kx] * (double)in[((g * cin_g + c) * ih + iy) * iw + ix];
            }
            out[(o * oh + oy) * ow + ox] = nearest ? (int64_t)round(acc * scale) : (int64_t)acc;
        }
    }
}

/* kind: 0 avg(k, s), 1 max(k, s, pad), 2 adaptive; div < 0: the window sums */
static void pool(const int64_t *in, int c, int ih, int iw, int oh, int ow, int kind, int k, int s, int pad,
                 int div, int64_t *out) {
    for (int ch = 0; ch < c; ch++) for (int oy = 0; oy < oh; oy++) for (int ox = 0; ox < ow; ox++) {
        int y0, y1, x0, x1;
        if (kind == 2) { y0 = oy * ih / oh; y1 = ((oy + 1) * ih + oh - 1) / oh; x0 = ox * iw / ow; x1 = ((ox + 1) * iw + ow - 1) / ow; pad = 0; }
        else { y0 = oy * s; y1 = oy * s + k; x0 = ox * s; x1 = ox * s + k; }
        int64_t sum = 0, best = INT64_MIN, n = 0;
        for (int y = y0; y < y1; y++) for (int x = x0; x < x1; x++) {
            int yy = y - (kind == 1 ? pad : 0), xx = x - (kind == 1 ? pad : 0);
            if (yy < 0 || yy >= ih || xx < 0 || xx >= iw) continue;
            int64_t v = in[(ch * ih + yy) * iw + xx];
            sum += v; if (v > best) best = v; n++;
        }
        out[(ch * oh + oy) * ow + ox] = kind == 1 ? best : (div < 0 ? sum : div_round(sum, n > 0 ? n : 1, div));
    }
}
"#;

/// The header (constants) and the reference inference.
pub fn c_source(plan: &IntPlan, stem: &str) -> (String, String) {
    let mut h = String::new();
    let guard = format!("QATC_{}_INT_H", stem.to_uppercase());
    let _ = writeln!(
        h,
        "/* Integer plan of model `{}`, profile `{}`, rounding `{}`: written by `qatc export`. */",
        plan.model, plan.profile, plan.options.rounding
    );
    let _ = writeln!(h, "#ifndef {guard}\n#define {guard}\n#include <stdint.h>\n");
    let [ic, ih, iw] = plan.input_shape;
    let _ = writeln!(
        h,
        "#define QATC_INPUT_C {ic}\n#define QATC_INPUT_H {ih}\n#define QATC_INPUT_W {iw}"
    );
    let _ = writeln!(h, "#define QATC_CLASSES {}\n", plan.output.classes);
    for (name, a) in &plan.clips {
        let _ = writeln!(h, "/* clipping value of {name}: {a} */");
    }
    for (i, t) in plan.tensors.iter().enumerate() {
        let _ = writeln!(
            h,
            "/* t{i} {} [{}x{}x{}]: {} */",
            t.name,
            t.shape[0],
            t.shape[1],
            t.shape[2],
            match &t.kind {
                super::plan::TensorKind::Act {
                    scale,
                    lo,
                    hi,
                    bits,
                } => format!("activation, value = q / {scale}, q in [{lo}, {hi}], {bits} bit"),
                super::plan::TensorKind::Acc { scale } =>
                    format!("accumulator, value = acc / {scale}"),
            }
        );
    }
    for (li, layer) in plan.layers.iter().enumerate() {
        let id = format!("L{li}_{}", ident(layer.name()));
        match layer {
            Layer::Conv(l) => {
                let _ = writeln!(
                    h,
                    "\n/* {}: conv {}->{} k{} s{} p{} g{}, w{} bit (int = real * {}), a{} bit, fan-in {} */",
                    l.name, l.cin, l.cout, l.kernel, l.stride, l.padding, l.groups, l.w_bits, l.w_scale, l.a_bits, l.fan_in
                );
                c_array(&mut h, "int32_t", &format!("{id}_w"), &l.weights);
            }
            Layer::Requant(r) => {
                let _ = writeln!(
                    h,
                    "\n/* {}: requant, {} term(s), {} (shift {}), clamp [{}, {}] */",
                    r.name,
                    r.terms.len(),
                    r.format,
                    r.shift,
                    r.lo,
                    r.hi
                );
                for (ti, t) in r.terms.iter().enumerate() {
                    c_array(&mut h, "int64_t", &format!("{id}_m{ti}"), &t.mult);
                }
                c_array(&mut h, "int64_t", &format!("{id}_b"), &r.bias);
            }
            Layer::QuantizeInput(q) => {
                let _ = writeln!(
                    h,
                    "\n/* {}: q = round_even(clamp(x * {}, {}, {}) * {}) */",
                    q.name, q.pre, q.clip_lo, q.clip_hi, q.gain
                );
            }
            Layer::Pool(p) => {
                let _ = writeln!(h, "\n/* {}: pool {:?} */", p.name, p.kind);
            }
            Layer::Channels(l) => {
                let _ = writeln!(
                    h,
                    "\n/* {}: channels, output channel j = input channel {id}_from[j] */",
                    l.name
                );
                c_array(&mut h, "int32_t", &format!("{id}_from"), &l.from);
            }
            Layer::Concat(l) => {
                let _ = writeln!(
                    h,
                    "\n/* {}: concat of {} tensors */",
                    l.name,
                    l.inputs.len()
                );
            }
            Layer::Mul(l) => {
                let _ = writeln!(
                    h,
                    "\n/* {}: product of two integer tensors{} */",
                    l.name,
                    if l.broadcast {
                        ", the gate broadcast over positions"
                    } else {
                        ""
                    }
                );
            }
            Layer::Lut(l) => {
                let _ = writeln!(
                    h,
                    "\n/* {}: {} by table, q -> clamp(round({} * {}(q / {}))): {id}_values[number of {id}_breaks <= q] */",
                    l.name, l.function, l.gain, l.function, l.scale
                );
                c_array(&mut h, "int64_t", &format!("{id}_breaks"), &l.breaks);
                c_array(&mut h, "int64_t", &format!("{id}_values"), &l.values);
            }
            Layer::HardSwish(l) => {
                let [a2, a1, a0] = l.c;
                let [l2, l1, l0] = l.shl;
                let _ = writeln!(
                    h,
                    "\n/* {}: hardswish, q <= {}: 0; q >= {}: ({a0} * q) << {l0}; else (({a2} * q * q) << {l2}) + (({a1} * q) << {l1}); shift {}, clamp [{}, {}] */",
                    l.name, l.neg, l.pos, l.shift, l.lo, l.hi
                );
            }
        }
    }
    let o = &plan.output;
    for (ti, k) in o.terms_f32.iter().enumerate() {
        let ks: Vec<String> = k.iter().map(|&x| c_float(x)).collect();
        c_array(&mut h, "float", &format!("OUT_k{ti}_f32"), &ks);
        let kd: Vec<String> = o.terms[ti].1.iter().map(|&x| c_double(x)).collect();
        c_array(&mut h, "double", &format!("OUT_k{ti}"), &kd);
    }
    let bs: Vec<String> = o.bias_f32.iter().map(|&x| c_float(x)).collect();
    c_array(&mut h, "float", "OUT_b_f32", &bs);
    let bd: Vec<String> = o.bias.iter().map(|&x| c_double(x)).collect();
    c_array(&mut h, "double", "OUT_b", &bd);
    let _ = writeln!(
        h,
        "\n/* Runs one image ([C,H,W] floats, normalised as in training); writes QATC_CLASSES logits. */\nvoid qatc_forward(const float *image, float *logits);\n\n#endif"
    );

    let mut c = String::new();
    let _ = writeln!(
        c,
        "/* Reference integer inference of model `{}` (profile `{}`), written by `qatc export`.\n   Build: cc -O2 -ffp-contract=off {stem}_int.c ... -lm */",
        plan.model, plan.profile
    );
    let _ = writeln!(
        c,
        "#include <math.h>\n#include <stdint.h>\n#include \"{stem}_int.h\""
    );
    c.push_str(C_HELPERS);
    for (i, t) in plan.tensors.iter().enumerate() {
        let _ = writeln!(c, "static int64_t t{i}[{}];", t.len().max(1));
    }
    c.push_str("\nvoid qatc_forward(const float *image, float *logits) {\n");
    for (li, layer) in plan.layers.iter().enumerate() {
        let id = format!("L{li}_{}", ident(layer.name()));
        match layer {
            Layer::QuantizeInput(q) => {
                let _ = writeln!(
                    c,
                    "    for (int i = 0; i < {n}; i++) {{ float y = image[i] * {pre}; y = y < {lo} ? {lo} : (y > {hi} ? {hi} : y); t{o}[i] = (int64_t)nearbyintf(y * {g}); }}",
                    n = plan.input_len(),
                    pre = c_float(q.pre),
                    lo = c_float(q.clip_lo),
                    hi = c_float(q.clip_hi),
                    g = c_float(q.gain),
                    o = q.output
                );
            }
            Layer::Conv(l) => {
                let args = format!(
                    "{}, {}, {}, {id}_w, {}, {}, {}, {}, {}, {}, {}",
                    l.cin,
                    l.in_hw[0],
                    l.in_hw[1],
                    l.cout,
                    l.kernel,
                    l.stride,
                    l.padding,
                    l.groups,
                    l.out_hw[0],
                    l.out_hw[1]
                );
                match l.input {
                    ConvInput::Float => {
                        let _ = writeln!(
                            c,
                            "    conv_float(image, {args}, {}, {}, t{});",
                            i32::from(!plan.options.rounding.is_trunc()),
                            c_double(l.float_scale),
                            l.output
                        );
                    }
                    ConvInput::Tensor(t) => {
                        let _ = writeln!(c, "    conv_int(t{t}, {args}, t{});", l.output);
                    }
                }
            }
            Layer::Requant(r) => {
                let ch = r.bias.len();
                let p = plan.tensors[r.output].len() / ch.max(1);
                let _ = writeln!(
                    c,
                    "    for (int c = 0; c < {ch}; c++) for (int i = 0; i < {p}; i++) {{"
                );
                let shift_fn = if r.wide {
                    let _ = write!(c, "        wide_t s = wide_from({id}_b[c]);");
                    for (ti, t) in r.terms.iter().enumerate() {
                        let _ = write!(
                            c,
                            "\n        s = wide_add(s, wide_mul(t{}[c * {p} + i], {id}_m{ti}[c]));",
                            t.src
                        );
                    }
                    "shift_round_wide"
                } else {
                    let _ = write!(c, "        int64_t s = (int64_t){id}_b[c]");
                    for (ti, t) in r.terms.iter().enumerate() {
                        let _ = write!(c, " + (int64_t)t{}[c * {p} + i] * {id}_m{ti}[c]", t.src);
                    }
                    let _ = write!(c, ";");
                    "shift_round"
                };
                let _ = writeln!(
                    c,
                    "\n        t{}[c * {p} + i] = clamp64({shift_fn}(s, {}, {}), INT64_C({}), INT64_C({}));\n    }}",
                    r.output,
                    r.shift,
                    div_code(r.div),
                    r.lo,
                    r.hi
                );
            }
            Layer::Pool(p) => {
                let [ch, ih, iw] = plan.tensors[p.input].shape;
                let [_, oh, ow] = plan.tensors[p.output].shape;
                let (kind, k, s, pad) = match p.kind {
                    PoolKind::Avg { kernel, stride } => (0, kernel, stride, 0),
                    PoolKind::Max {
                        kernel,
                        stride,
                        padding,
                    } => (1, kernel, stride, padding),
                    PoolKind::Adaptive { .. } => (2, 0, 0, 0),
                };
                let _ = writeln!(
                    c,
                    "    pool(t{}, {ch}, {ih}, {iw}, {oh}, {ow}, {kind}, {k}, {s}, {pad}, {}, t{});",
                    p.input,
                    if p.sum_only { -1 } else { div_code(p.div) },
                    p.output
                );
            }
            Layer::Channels(l) => {
                let [_, oh, ow] = plan.tensors[l.output].shape;
                let p = oh * ow;
                let _ = writeln!(
                    c,
                    "    for (int j = 0; j < {}; j++) for (int i = 0; i < {p}; i++) t{}[j * {p} + i] = t{}[{id}_from[j] * {p} + i];",
                    l.from.len(),
                    l.output,
                    l.input
                );
            }
            Layer::Concat(l) => {
                let mut at = 0;
                for &t in &l.inputs {
                    let n = plan.tensors[t].len();
                    let _ = writeln!(
                        c,
                        "    for (int i = 0; i < {n}; i++) t{}[{at} + i] = t{t}[i];",
                        l.output
                    );
                    at += n;
                }
            }
            Layer::Mul(l) => {
                let [ch, oh, ow] = plan.tensors[l.output].shape;
                let p = oh * ow;
                let gi = if l.broadcast {
                    "c".to_string()
                } else {
                    format!("c * {p} + i")
                };
                let _ = writeln!(
                    c,
                    "    for (int c = 0; c < {ch}; c++) for (int i = 0; i < {p}; i++) t{o}[c * {p} + i] = t{x}[c * {p} + i] * t{g}[{gi}];",
                    o = l.output,
                    x = l.input,
                    g = l.gate
                );
            }
            Layer::Lut(l) => {
                let n = plan.tensors[l.output].len();
                let _ = writeln!(
                    c,
                    "    for (int i = 0; i < {n}; i++) {{\n        int64_t q = t{}[i];\n        int a = 0, b = {};\n        while (a < b) {{\n            int m = a + (b - a) / 2;\n            if ({id}_breaks[m] <= q) a = m + 1; else b = m;\n        }}\n        t{}[i] = {id}_values[a];\n    }}",
                    l.input,
                    l.breaks.len(),
                    l.output
                );
            }
            Layer::HardSwish(l) => {
                let n = plan.tensors[l.output].len();
                let (sh, dv) = (l.shift, div_code(l.div));
                let ([a2, a1, a0], [l2, l1, l0]) = (l.c, l.shl);
                let (above, middle) = if l.wide {
                    (
                        format!("shift_round_wide(wide_shl(wide_mul(q, INT64_C({a0})), {l0}), {sh}, {dv})"),
                        format!(
                            "shift_round_wide(wide_add(wide_shl(wide_mul(q * q, INT64_C({a2})), {l2}), wide_shl(wide_mul(q, INT64_C({a1})), {l1})), {sh}, {dv})"
                        ),
                    )
                } else {
                    // Powers of two as multiplications: shifting a negative
                    // value left is undefined in C.
                    (
                        format!("shift_round(INT64_C({a0}) * q * (INT64_C(1) << {l0}), {sh}, {dv})"),
                        format!(
                            "shift_round(INT64_C({a2}) * q * q * (INT64_C(1) << {l2}) + INT64_C({a1}) * q * (INT64_C(1) << {l1}), {sh}, {dv})"
                        ),
                    )
                };
                let _ = writeln!(
                    c,
                    "    for (int i = 0; i < {n}; i++) {{\n        int64_t q = t{}[i];\n        int64_t r = q <= INT64_C({}) ? 0 : (q >= INT64_C({}) ? {above} : {middle});\n        t{}[i] = clamp64(r, INT64_C({}), INT64_C({}));\n    }}",
                    l.input, l.neg, l.pos, l.output, l.lo, l.hi
                );
            }
        }
    }
    let trunc = plan.options.rounding == Rounding::Trunc;
    let _ = writeln!(
        c,
        "    for (int c = 0; c < QATC_CLASSES; c++) {{\n        /* one float operation per statement: each result is rounded to\n           float even where the compiler evaluates in wider registers (x87) */\n        float l = 0.0f, p = 0.0f;\n        double d = 0.0, q = 0.0;\n        (void)p;\n        (void)q;"
    );
    for (ti, (src, _)) in o.terms.iter().enumerate() {
        let linear = plan
            .seed_linear(ti)
            .map(|(li, cl, t)| (format!("L{li}_{}", ident(&cl.name)), cl, t));
        if let Some((id, cl, input)) = linear {
            let _ = writeln!(
                c,
                "        p = seed_linear(t{input}, {id}_w + c * {n}, {n}) * OUT_k{ti}_f32[c];\n        l = l + p;",
                n = cl.cin
            );
        } else if trunc {
            let _ = writeln!(
                c,
                "        p = (float)t{src}[c] * OUT_k{ti}_f32[c];\n        l = l + p;"
            );
        } else {
            let _ = writeln!(
                c,
                "        q = (double)t{src}[c] * OUT_k{ti}[c];\n        d = d + q;"
            );
        }
    }
    if trunc {
        c.push_str("        l = l + OUT_b_f32[c];\n        (void)d;\n");
    } else {
        c.push_str("        l = (float)(d + OUT_b[c]);\n");
    }
    c.push_str("        logits[c] = l;\n    }\n}\n");
    (h, c)
}

/// A `main` that runs the test images and compares the logits bit for bit.
fn c_test(plan: &IntPlan, stem: &str, tests: &TestImages) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "/* Test images and the Rust engine's logits for them: exits 0 when every logit is bit-identical. */\n#include <stdio.h>\n#include <string.h>\n#include <stdint.h>\n#include \"{stem}_int.h\"\n"
    );
    let n = tests.images.len();
    let _ = writeln!(t, "#define N_IMAGES {n}");
    let bits = |v: &[f32]| -> Vec<String> {
        v.iter()
            .map(|x| format!("0x{:08x}u", x.to_bits()))
            .collect()
    };
    let all_images: Vec<String> = tests.images.iter().flat_map(|im| bits(im)).collect();
    c_array(&mut t, "uint32_t", "IMAGES", &all_images);
    let all_logits: Vec<String> = tests.logits.iter().flat_map(|l| bits(l)).collect();
    c_array(&mut t, "uint32_t", "LOGITS", &all_logits);
    let per = plan.input_len();
    let _ = writeln!(
        t,
        r#"
int main(void) {{
    static float image[{per}];
    float logits[QATC_CLASSES];
    int bad = 0;
    for (int i = 0; i < N_IMAGES; i++) {{
        memcpy(image, &IMAGES[i * {per}], sizeof image);
        qatc_forward(image, logits);
        for (int c = 0; c < QATC_CLASSES; c++) {{
            uint32_t got;
            memcpy(&got, &logits[c], sizeof got);
            printf("%s%08x", c ? " " : "", (unsigned)got);
            if (got != LOGITS[i * QATC_CLASSES + c]) bad++;
        }}
        printf("\n");
    }}
    fprintf(stderr, "%d of %d logits differ from the Rust engine\n", bad, N_IMAGES * QATC_CLASSES);
    return bad != 0;
}}"#
    );
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_of_known_strings() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn npy_header_is_padded_to_64() {
        let b = Npy::I64(vec![1, 2, 3], vec![3]).bytes();
        assert_eq!(&b[..8], b"\x93NUMPY\x01\x00");
        let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        assert_eq!(b.len(), 10 + hlen + 24);
        let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
        assert!(header.starts_with("{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }"));
        assert!(header.ends_with('\n'));
    }

    #[test]
    fn zip_has_entries_and_end_record() {
        let z = zip_stored(&[("a.npy".into(), vec![1, 2, 3]), ("b.npy".into(), vec![])]);
        assert_eq!(&z[..4], &[0x50, 0x4b, 0x03, 0x04]);
        let end = &z[z.len() - 22..];
        assert_eq!(&end[..4], &[0x50, 0x4b, 0x05, 0x06]);
        assert_eq!(u16::from_le_bytes([end[10], end[11]]), 2);
    }
}
