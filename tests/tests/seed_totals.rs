//! The seed's published counts (seed reference section 4), reproduced from
//! the specs in `spec/`.

use qatc::driver::{self, Source};
use qatc::summary::{summarize, Totals};
use std::path::Path;

fn totals(spec: &str, profile: Option<&str>) -> Totals {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../spec")
        .join(spec);
    let src = Source::read(&path).expect("spec readable");
    let g = driver::compile(&src)
        .and_then(|c| c.into_graph(profile))
        .unwrap_or_else(|d| panic!("{}", d.render_plain(&src.name, &src.text)));
    summarize(&g).totals
}

#[test]
fn toynet_matches_seed() {
    let t = totals("toynet.qspec", None);
    assert_eq!(t.params, 203_626);
    assert_eq!(t.conv_macs, 25_260_032);
    assert_eq!(t.fc_macs, 5_120);
    assert_eq!(t.bn_ops, 303_104);
    assert_eq!(t.pool_ops, 33_280);
    assert_eq!(t.seed_macs, 25_601_536);
}

#[test]
fn resnet20_matches_seed() {
    let t = totals("resnet20.qspec", None);
    assert_eq!(t.params, 272_474);
    assert_eq!(t.conv_macs, 40_812_544);
    assert_eq!(t.fc_macs, 640);
    assert_eq!(t.bn_ops, 401_408);
    assert_eq!(t.pool_ops, 64);
    assert_eq!(t.seed_macs, 41_214_656);
}

#[test]
fn mobilenetv2_matches_seed() {
    let t = totals("mobilenetv2.qspec", None);
    assert_eq!(t.params, 2_383_050);
    assert_eq!(t.conv_macs, 95_041_536);
    assert_eq!(t.fc_macs, 12_800);
    assert_eq!(t.bn_ops, 3_591_168);
    assert_eq!(t.pool_ops, 0);
    assert_eq!(t.seed_macs, 98_645_504);
}

#[test]
fn counts_do_not_depend_on_the_profile_but_memory_and_bops_do() {
    let a = totals("toynet.qspec", Some("cfg-1*"));
    let b = totals("toynet.qspec", Some("cfg-3"));
    let c = totals("toynet.qspec", Some("cfg-1"));
    let f = totals("toynet.qspec", Some("float"));
    assert_eq!((a.params, a.seed_macs), (b.params, b.seed_macs));
    assert!(a.weight_bytes < f.weight_bytes);
    // cfg-3 narrows cfg-1's blocks to 6 bits; both keep the stem float.
    assert!(b.bops < c.bops && c.bops < f.bops);
    assert!(b.weight_bytes < c.weight_bytes);
    // Float weights: 4 bytes per param (BN and biases included) + 4 per clipping value.
    assert_eq!(f.weight_bytes, 4 * f.params + 4 * f.clip_values);
}

/// VGG-7 (spec/vgg7.qspec), counted by hand layer by layer.
#[test]
fn vgg7_matches_hand_count() {
    // conv3x3 without bias on an h x h map, stride 1, padding 1.
    let conv = |cin: u64, cout: u64, h: u64| (cout * cin * 9, h * h * cout * cin * 9);
    let layers = [
        conv(3, 64, 32),  // stem
        conv(64, 64, 32), // c1
        conv(64, 64, 32),
        conv(64, 128, 16), // c2 (after 2x2 max pooling)
        conv(128, 128, 16),
        conv(128, 256, 8), // c3
        conv(256, 256, 8),
    ];
    let conv_params: u64 = layers.iter().map(|l| l.0).sum();
    let conv_macs: u64 = layers.iter().map(|l| l.1).sum();
    // BN after every conv: gamma + beta per channel, 2 ops per output element.
    let bn = [
        (64, 32),
        (64, 32),
        (64, 32),
        (128, 16),
        (128, 16),
        (256, 8),
        (256, 8),
    ];
    let bn_params: u64 = bn.iter().map(|(c, _)| 2 * c).sum();
    let bn_ops: u64 = bn.iter().map(|(c, h)| 2 * c * h * h).sum();
    // 256 x 4 x 4 = 4096 features -> 256 -> 10, with biases.
    let fc_params = 4096 * 256 + 256 + 256 * 10 + 10;
    let fc_macs = 4096 * 256 + 256 * 10;

    let t = totals("vgg7.qspec", None);
    assert_eq!(t.conv_macs, conv_macs);
    assert_eq!(t.fc_macs, fc_macs);
    assert_eq!(t.params, conv_params + bn_params + fc_params);
    assert_eq!(t.bn_ops, bn_ops);
    assert_eq!(t.pool_ops, 0, "max pooling counts 0 in the seed's profiler");
    assert_eq!(t.seed_macs, conv_macs + fc_macs + bn_ops);
    // PACT clipping values: stem, one per block output (3), one in fc.
    assert_eq!(t.clip_values, 5);
    // Known totals, so a counting change shows up here too.
    assert_eq!(t.params, 2_234_698);
    assert_eq!(t.conv_macs, 190_513_152);
}
