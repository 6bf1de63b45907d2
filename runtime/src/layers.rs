//! Quantized layers: conv2d and linear whose weights go through the DoReFa
//! weight quantizer, and the seed's (unfolded) 2-D batch normalisation.
//!
//! Input: a variable path (`&nn::Path`) and explicit shapes, bit-widths and
//! options; every learnable tensor is a variable of that path, named as in
//! PyTorch (`weight`, `bias`, `running_mean`, `running_var`), so checkpoints
//! map one to one onto the seed's state dict.
//!
//! Invariants:
//! - The weight is quantized at the layer's `w_bit` on every forward pass
//!   (train and eval alike, as in the seed), and the gradient reaches the
//!   float weight through [`dorefa_weight`]; `w_bit == 32` is a plain layer.
//!   Where autograd does not track the weight (under `no_grad`, or a frozen
//!   weight), the quantized weight is computed once and reused until the
//!   weight changes: every in-place change (an optimizer step, loading a
//!   checkpoint) bumps the tensor's version counter, which the cache checks.
//! - Convolutions run on channels-last operands (input and quantized
//!   weight) ([`channels_last`]). Their output stays channels-last under
//!   [`Layout::ChannelsLast`] (the default: every activation of the model is
//!   then channels-last, the fast layout for libtorch's CPU kernels), or is
//!   made contiguous `NCHW` under [`Layout::Nchw`], the seed's layout, which
//!   reproduces its golden tensors bit for bit (`QATC_LAYOUT=nchw`, or
//!   [`set_layout`] per thread). The two compute the same functions; only the order of
//!   float sums inside batch norm and the convs differs.
//! - Biases and BN parameters stay float. BN is never folded into the conv
//!   during QAT (the seed found folding hurt convergence).
//! - Initialisation is explicit: the seed's models use different schemes
//!   ([`ConvInit`], [`LinearInit`]); the default is PyTorch's.

use crate::dist::ProcessGroup;
use crate::quant::{bits_supported, dorefa_weight, tracked, QuantError, FLOAT_BITS};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::OnceLock;
use tch::nn::{self, Init};
use tch::Tensor;

/// The memory layout of the activations between layers (`--layout`,
/// recorded in a run's settings as `channels-last` or `nchw`).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// Channels-last (`NHWC` strides) throughout: convolution outputs stay
    /// channels-last, and batch norm, the quantizers and the element-wise ops
    /// follow them. The default: a ResNet20 training step runs about 1.3x
    /// and a ToyNet step about 1.6x faster than under [`Layout::Nchw`] on
    /// the development machine (`docs/performance.md`).
    #[value(alias = "nhwc", alias = "channels_last")]
    #[serde(alias = "nhwc")]
    #[default]
    ChannelsLast,
    /// Contiguous `NCHW` activations (each conv still runs on channels-last
    /// operands and converts its output back): the seed's layout, whose float
    /// rounding its golden tensors record (`tests/tests/golden_models.rs`).
    Nchw,
    /// PyTorch's default: contiguous `NCHW` activations and convolutions on
    /// `NCHW` operands (input and weight), so that libtorch runs the kernels
    /// a plain PyTorch model runs and sums in their order. A user comparing
    /// qatc with a PyTorch run of the same model on the same machine gets the
    /// same bits (the golden sets of `../shared/golden-seeds`, made with the
    /// seed's code in its default layout, are reproduced end to end by it).
    #[value(alias = "nchw-operands")]
    Pytorch,
}

thread_local! {
    /// The calling thread's layout, where [`set_layout`] chose one.
    static LAYOUT: Cell<Option<Layout>> = const { Cell::new(None) };
}

impl std::fmt::Display for Layout {
    /// The name `--layout` and `QATC_LAYOUT` take (`channels-last`, `nchw`,
    /// `pytorch`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use clap::ValueEnum;
        match self.to_possible_value() {
            Some(value) => f.write_str(value.get_name()),
            None => write!(f, "{self:?}"),
        }
    }
}

/// A `QATC_LAYOUT` value that names no [`Layout`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("QATC_LAYOUT={value:?}: expected `channels-last`, `nchw` or `pytorch`")]
pub struct LayoutError {
    /// The variable's value, as set.
    pub value: String,
}

/// The layout in force on this thread: the one [`set_layout`] chose, else
/// the one the environment variable `QATC_LAYOUT` names (`nchw`,
/// `channels-last` or `pytorch`; read once per process), else
/// [`Layout::ChannelsLast`].
///
/// A `QATC_LAYOUT` that names no layout is a usage error that the entry
/// points report before any model runs ([`layout_from_env`]: the generated
/// binaries' command line, `train`, `eval`); a program that embeds a model
/// and skips that check gets the default here, not a panic.
pub fn layout() -> Layout {
    static FROM_ENV: OnceLock<Layout> = OnceLock::new();
    LAYOUT
        .with(Cell::get)
        .unwrap_or_else(|| *FROM_ENV.get_or_init(|| layout_from_env().unwrap_or_default()))
}

/// The layout `QATC_LAYOUT` asks for ([`Layout::ChannelsLast`] when unset),
/// or an error naming the variable and its bad value.
pub fn layout_from_env() -> Result<Layout, LayoutError> {
    match std::env::var("QATC_LAYOUT") {
        Err(_) => Ok(Layout::ChannelsLast),
        Ok(v) => <Layout as clap::ValueEnum>::from_str(v.trim(), true)
            .map_err(|_| LayoutError { value: v }),
    }
}

/// Sets the layout of the models the calling thread runs (the thread that
/// calls their forward passes; backward passes follow the forward's
/// layout).
pub fn set_layout(layout: Layout) {
    LAYOUT.with(|l| l.set(Some(layout)));
}

thread_local! {
    static SYNC_BN: RefCell<Option<Rc<ProcessGroup>>> = const { RefCell::new(None) };
}

/// Makes every [`BatchNorm2d`] the calling thread runs in training mode
/// use the batch statistics of the whole group (`--sync-bn`), or (`None`)
/// its own batch's, the default. See [`BatchNorm2d`].
pub fn set_sync_bn(group: Option<Rc<ProcessGroup>>) {
    SYNC_BN.with(|s| *s.borrow_mut() = group);
}

/// The quantized weight of a layer, kept for untracked forward passes.
#[derive(Debug, Default)]
struct WeightCache(RefCell<Option<CachedWeight>>);

#[derive(Debug)]
struct CachedWeight {
    /// The float weight's version counter and data address when `q` was made.
    key: (i64, usize),
    q: Tensor,
}

impl WeightCache {
    /// `dorefa_weight(w, bits)`: fresh where autograd tracks `w` (training
    /// needs a new graph each step), else from the cache while `w` has not
    /// changed since it was quantized. The cached tensor is shared: callers
    /// must not change it in place.
    fn quantized(&self, w: &Tensor, bits: u32) -> Tensor {
        self.prepared(w, bits, |q| q)
    }

    /// [`quantized`](Self::quantized) followed by `prepare` (a change of
    /// memory layout), cached as prepared.
    fn prepared(&self, w: &Tensor, bits: u32, prepare: impl Fn(Tensor) -> Tensor) -> Tensor {
        if bits == FLOAT_BITS || tracked(w) {
            return prepare(dorefa_weight(w, bits));
        }
        let key = (w.internal_version(), w.data_ptr() as usize);
        let mut cache = self.0.borrow_mut();
        match cache.as_ref() {
            Some(cached) if cached.key == key => cached.q.shallow_clone(),
            _ => {
                let q = tch::no_grad(|| prepare(dorefa_weight(w, bits)));
                *cache = Some(CachedWeight {
                    key,
                    q: q.shallow_clone(),
                });
                q
            }
        }
    }
}

/// How a conv layer's weight (and bias, if any) is initialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConvInit {
    /// Kaiming-normal, fan-out, ReLU gain: `std = sqrt(2 / (out * k * k))`;
    /// bias 0. The seed's ToyNet (torch's `kaiming_normal_(mode='fan_out')`).
    KaimingNormalFanOut,
    /// Kaiming-uniform, fan-in, ReLU gain: bound `sqrt(6 / fan_in)`; bias 0.
    /// The seed's ResNet20 (torch's `kaiming_uniform_` with defaults).
    KaimingUniform,
    /// PyTorch's default for `nn.Conv2d`: weight and bias uniform in
    /// `±1/sqrt(fan_in)` (`kaiming_uniform_(a=sqrt(5))`). The seed's
    /// MobileNetV2.
    #[default]
    PyTorchDefault,
}

/// How a linear layer's weight (and bias, if any) is initialised.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum LinearInit {
    /// Weight normal with mean 0 and this standard deviation, bias 0
    /// (the seed's ToyNet fc uses `std = 0.001`).
    Normal {
        /// Standard deviation of the weight.
        std: f64,
    },
    /// Kaiming-uniform, fan-in, ReLU gain for the weight; bias 0.
    KaimingUniform,
    /// PyTorch's default for `nn.Linear`: weight and bias uniform in
    /// `±1/sqrt(in_features)`.
    #[default]
    PyTorchDefault,
}

/// The uniform initialisation PyTorch gives a layer with this fan-in.
fn pytorch_default_uniform(fan_in: i64) -> Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

fn kaiming(dist: nn::init::NormalOrUniform, fan: nn::init::FanInOut) -> Init {
    Init::Kaiming {
        dist,
        fan,
        non_linearity: nn::init::NonLinearity::ReLU,
    }
}

/// Why a layer cannot be built as asked ([`QConv2d::try_new`],
/// [`QLinear::try_new`]).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum LayerError {
    #[error("QConv2d: bad sizes (in {in_channels}, out {out_channels}, kernel {kernel}, stride {stride}, padding {padding})")]
    ConvSizes {
        in_channels: i64,
        out_channels: i64,
        kernel: i64,
        stride: i64,
        padding: i64,
    },
    #[error(
        "QConv2d: {in_channels} -> {out_channels} channels cannot be split into {groups} groups"
    )]
    Groups {
        in_channels: i64,
        out_channels: i64,
        groups: i64,
    },
    #[error("QLinear: bad sizes (in {in_features}, out {out_features})")]
    LinearSizes { in_features: i64, out_features: i64 },
    /// The weight's bit-width.
    #[error(transparent)]
    Bits(#[from] QuantError),
}

/// Options of a [`QConv2d`]; `Default` is stride 1, no padding, one group,
/// no bias (the seed's convs have none) and PyTorch's initialisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QConv2dConfig {
    /// Stride in both directions.
    pub stride: i64,
    /// Zero padding on every side.
    pub padding: i64,
    /// Number of groups (`groups == in_channels == out_channels`: depthwise).
    pub groups: i64,
    /// Whether the layer has a bias.
    pub bias: bool,
    /// Initialisation of weight and bias.
    pub init: ConvInit,
}

impl Default for QConv2dConfig {
    fn default() -> Self {
        Self {
            stride: 1,
            padding: 0,
            groups: 1,
            bias: false,
            init: ConvInit::default(),
        }
    }
}

/// A 2-D convolution (square kernel, dilation 1) with a DoReFa-quantized
/// weight of shape `[out, in / groups, k, k]`.
#[derive(Debug)]
pub struct QConv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    w_bit: u32,
    config: QConv2dConfig,
    cache: WeightCache,
}

impl QConv2d {
    /// A conv layer `in_channels -> out_channels` with a `kernel x kernel`
    /// kernel whose weight is quantized at `w_bit` bits. For the numbers of
    /// a generated crate's own profile tables, which the compiler has
    /// checked; numbers from elsewhere (a `Profile` made at run time) go
    /// through [`QConv2d::try_new`].
    ///
    /// # Panics
    /// Where [`QConv2d::try_new`] returns an error (the same message).
    pub fn new(
        path: &nn::Path,
        in_channels: i64,
        out_channels: i64,
        kernel: i64,
        w_bit: u32,
        config: QConv2dConfig,
    ) -> Self {
        match Self::try_new(path, in_channels, out_channels, kernel, w_bit, config) {
            Ok(conv) => conv,
            Err(e) => panic!("{e}"),
        }
    }

    /// A conv layer as [`QConv2d::new`] makes it, or an error, before any
    /// variable is created, where a size is not positive, the channels are
    /// not divisible by `config.groups`, or `w_bit` is not a supported
    /// bit-width (1..=16 or 32).
    pub fn try_new(
        path: &nn::Path,
        in_channels: i64,
        out_channels: i64,
        kernel: i64,
        w_bit: u32,
        config: QConv2dConfig,
    ) -> Result<Self, LayerError> {
        let QConv2dConfig {
            stride,
            padding,
            groups,
            bias,
            init,
        } = config;
        if !(in_channels > 0 && out_channels > 0 && kernel > 0 && stride > 0 && padding >= 0) {
            return Err(LayerError::ConvSizes {
                in_channels,
                out_channels,
                kernel,
                stride,
                padding,
            });
        }
        if !(groups > 0 && in_channels % groups == 0 && out_channels % groups == 0) {
            return Err(LayerError::Groups {
                in_channels,
                out_channels,
                groups,
            });
        }
        bits_supported("QConv2d weight", w_bit, 1)?;
        let dims = [out_channels, in_channels / groups, kernel, kernel];
        let fan_in = in_channels / groups * kernel * kernel;
        use nn::init::{FanInOut, NormalOrUniform};
        let (weight_init, bias_init) = match init {
            ConvInit::KaimingNormalFanOut => (
                kaiming(NormalOrUniform::Normal, FanInOut::FanOut),
                Init::Const(0.0),
            ),
            ConvInit::KaimingUniform => (
                kaiming(NormalOrUniform::Uniform, FanInOut::FanIn),
                Init::Const(0.0),
            ),
            ConvInit::PyTorchDefault => (
                pytorch_default_uniform(fan_in),
                pytorch_default_uniform(fan_in),
            ),
        };
        let weight = path.var("weight", &dims, weight_init);
        let bias = bias.then(|| path.var("bias", &[out_channels], bias_init));
        Ok(Self {
            weight,
            bias,
            w_bit,
            config,
            cache: WeightCache::default(),
        })
    }

    /// The float weight (the variable that is trained).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, if the layer has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The weight bit-width (32: not quantized).
    pub fn w_bit(&self) -> u32 {
        self.w_bit
    }

    /// The layer's options.
    pub fn config(&self) -> QConv2dConfig {
        self.config
    }

    /// The weight as the forward pass uses it: DoReFa-quantized at `w_bit`,
    /// in channels-last memory layout (see [`channels_last`]; the values do
    /// not depend on the layout), cached where autograd does not track it
    /// (see the module doc).
    pub fn quantized_weight(&self) -> Tensor {
        self.cache
            .prepared(&self.weight, self.w_bit, |q| channels_last(&q))
    }
}

impl nn::Module for QConv2d {
    /// The convolution is computed in channels-last layout (input and
    /// weight); the output is channels-last, or contiguous (`NCHW`) under
    /// [`Layout::Nchw`]: see [`layout`] and [`channels_last`]. Under
    /// [`Layout::Pytorch`] it runs on contiguous operands, as PyTorch does.
    fn forward(&self, xs: &Tensor) -> Tensor {
        let QConv2dConfig {
            stride,
            padding,
            groups,
            ..
        } = self.config;
        let layout = layout();
        let (x, w) = match layout {
            Layout::ChannelsLast | Layout::Nchw => (channels_last(xs), self.quantized_weight()),
            Layout::Pytorch => (xs.contiguous(), self.quantized_weight().contiguous()),
        };
        let y = x.conv2d(
            &w,
            self.bias.as_ref(),
            [stride, stride],
            [padding, padding],
            [1, 1],
            groups,
        );
        match layout {
            Layout::ChannelsLast => y,
            Layout::Nchw | Layout::Pytorch => y.contiguous(),
        }
    }
}

/// A 4-D tensor with the same sizes and values in channels-last memory
/// layout (strides of `[N, H, W, C]`, as PyTorch's
/// `x.contiguous(memory_format=torch.channels_last)`); the tensor itself
/// where it already has that layout. Differentiable (a permuted copy).
///
/// Convolutions run on channels-last operands in both layouts ([`Layout`]).
/// In the seed's layout ([`Layout::Nchw`]) this is how its golden tensors
/// were rounded: on the development machine (libtorch 2.13 CPU, oneDNN,
/// AVX2) the generated ResNet20 then matches the seed's eval and
/// training-mode logits and loss bit for bit and every gradient within 3e-6
/// (`tests/tests/golden_models.rs`), and ToyNet and MobileNetV2 keep fewer
/// rounding flips. With contiguous (`NCHW`) operands oneDNN runs other
/// kernels whose last bits differ, and the fake quantizers turn a few of
/// those differences into one-step flips. In that layout each conv pays a
/// copy of its input and output (and of their gradients); in the default
/// channels-last layout the activations already have this layout and this
/// is a no-op.
pub fn channels_last(t: &Tensor) -> Tensor {
    let size = t.size();
    if size.len() != 4 {
        return t.shallow_clone();
    }
    let (c, h, w) = (size[1], size[2], size[3]);
    if t.stride() == [h * w * c, 1, w * c, c] {
        return t.shallow_clone();
    }
    t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// Options of a [`QLinear`]; `Default` has a bias and PyTorch's
/// initialisation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QLinearConfig {
    /// Whether the layer has a bias.
    pub bias: bool,
    /// Initialisation of weight and bias.
    pub init: LinearInit,
}

impl Default for QLinearConfig {
    fn default() -> Self {
        Self {
            bias: true,
            init: LinearInit::default(),
        }
    }
}

/// A fully connected layer `y = x W^T + b` with a DoReFa-quantized weight of
/// shape `[out, in]`.
#[derive(Debug)]
pub struct QLinear {
    weight: Tensor,
    bias: Option<Tensor>,
    w_bit: u32,
    cache: WeightCache,
}

impl QLinear {
    /// A linear layer `in_features -> out_features` whose weight is
    /// quantized at `w_bit` bits. For the numbers of a generated crate's own
    /// profile tables; numbers from elsewhere go through
    /// [`QLinear::try_new`].
    ///
    /// # Panics
    /// Where [`QLinear::try_new`] returns an error (the same message).
    pub fn new(
        path: &nn::Path,
        in_features: i64,
        out_features: i64,
        w_bit: u32,
        config: QLinearConfig,
    ) -> Self {
        match Self::try_new(path, in_features, out_features, w_bit, config) {
            Ok(fc) => fc,
            Err(e) => panic!("{e}"),
        }
    }

    /// A linear layer as [`QLinear::new`] makes it, or an error, before any
    /// variable is created, where a size is not positive or `w_bit` is not
    /// a supported bit-width (1..=16 or 32).
    pub fn try_new(
        path: &nn::Path,
        in_features: i64,
        out_features: i64,
        w_bit: u32,
        config: QLinearConfig,
    ) -> Result<Self, LayerError> {
        if !(in_features > 0 && out_features > 0) {
            return Err(LayerError::LinearSizes {
                in_features,
                out_features,
            });
        }
        bits_supported("QLinear weight", w_bit, 1)?;
        use nn::init::{FanInOut, NormalOrUniform};
        let (weight_init, bias_init) = match config.init {
            LinearInit::Normal { std } => (
                Init::Randn {
                    mean: 0.0,
                    stdev: std,
                },
                Init::Const(0.0),
            ),
            LinearInit::KaimingUniform => (
                kaiming(NormalOrUniform::Uniform, FanInOut::FanIn),
                Init::Const(0.0),
            ),
            LinearInit::PyTorchDefault => (
                pytorch_default_uniform(in_features),
                pytorch_default_uniform(in_features),
            ),
        };
        let weight = path.var("weight", &[out_features, in_features], weight_init);
        let bias = config
            .bias
            .then(|| path.var("bias", &[out_features], bias_init));
        Ok(Self {
            weight,
            bias,
            w_bit,
            cache: WeightCache::default(),
        })
    }

    /// The float weight (the variable that is trained).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, if the layer has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The weight bit-width (32: not quantized).
    pub fn w_bit(&self) -> u32 {
        self.w_bit
    }

    /// The weight as the forward pass uses it: DoReFa-quantized at `w_bit`
    /// (cached where autograd does not track it; see the module doc).
    pub fn quantized_weight(&self) -> Tensor {
        self.cache.quantized(&self.weight, self.w_bit)
    }
}

impl nn::Module for QLinear {
    fn forward(&self, xs: &Tensor) -> Tensor {
        xs.linear(&self.quantized_weight(), self.bias.as_ref())
    }
}

/// BN epsilon of every model in the seed.
pub const BN_EPS: f64 = 1e-5;

/// BN running-statistics momentum of every model in the seed.
pub const BN_MOMENTUM: f64 = 0.1;

/// 2-D batch normalisation as in the seed (PyTorch's `nn.BatchNorm2d`):
/// affine, eps 1e-5, momentum 0.1, weight 1 and bias 0 at start, running
/// mean 0 and variance 1. Training mode uses batch statistics and updates
/// the running ones; eval mode uses the running ones.
///
/// Synchronised BN ([`set_sync_bn`], `--sync-bn`): in training mode the
/// batch statistics are those of the whole group's batch: the per-channel
/// sums and the image count are summed over the ranks, then the sums of
/// squared deviations from that mean (two differentiable all-reduces,
/// [`ProcessGroup::all_reduce_autograd`], whose backward sums the
/// statistics' gradients over the ranks as PyTorch's `SyncBatchNorm`
/// does); the running statistics are updated from them (unbiased variance)
/// as `nn.BatchNorm2d` would on the whole batch.
#[derive(Debug)]
pub struct BatchNorm2d {
    inner: nn::BatchNorm,
}

impl BatchNorm2d {
    /// A BN layer over `channels` channels.
    pub fn new(path: &nn::Path, channels: i64) -> Self {
        let config = nn::BatchNormConfig {
            eps: BN_EPS,
            momentum: BN_MOMENTUM,
            affine: true,
            ws_init: Init::Const(1.0),
            bs_init: Init::Const(0.0),
            ..Default::default()
        };
        Self {
            inner: nn::batch_norm2d(path, channels, config),
        }
    }

    /// The scale `gamma`.
    pub fn weight(&self) -> &Tensor {
        self.inner.ws.as_ref().expect("the seed's BN is affine")
    }

    /// The shift `beta`.
    pub fn bias(&self) -> &Tensor {
        self.inner.bs.as_ref().expect("the seed's BN is affine")
    }

    /// The running mean used in eval mode.
    pub fn running_mean(&self) -> &Tensor {
        &self.inner.running_mean
    }

    /// The running (unbiased) variance used in eval mode.
    pub fn running_var(&self) -> &Tensor {
        &self.inner.running_var
    }
}

impl BatchNorm2d {
    /// Training mode over the group's batch (see the type's docs).
    fn forward_sync(&self, xs: &Tensor, group: &ProcessGroup) -> Tensor {
        let c = xs.size()[1];
        let dims = [0i64, 2, 3];
        let kind = xs.kind();
        let count = (xs.numel() as i64 / c.max(1)) as f64;
        let sum = xs.sum_dim_intlist(&dims[..], false, kind);
        let count = Tensor::from_slice(&[count])
            .to_kind(kind)
            .to_device(xs.device());
        let first = group.all_reduce_autograd(&Tensor::cat(&[sum, count], 0));
        let n = first.double_value(&[c]).max(1.0);
        let mean = first.narrow(0, 0, c) / n;
        let centered = xs - mean.view([1, c, 1, 1]);
        let sq = (&centered * &centered).sum_dim_intlist(&dims[..], false, kind);
        let var = group.all_reduce_autograd(&sq) / n;
        let inv = (&var + BN_EPS).rsqrt().view([1, c, 1, 1]);
        tch::no_grad(|| {
            let m = BN_MOMENTUM;
            let unbiased = if n > 1.0 { n / (n - 1.0) } else { 1.0 };
            let rm = self.inner.running_mean.shallow_clone();
            let rv = self.inner.running_var.shallow_clone();
            rm.shallow_clone()
                .copy_(&(&rm * (1.0 - m) + mean.detach() * m));
            rv.shallow_clone()
                .copy_(&(&rv * (1.0 - m) + var.detach() * (m * unbiased)));
        });
        centered * inv * self.weight().view([1, c, 1, 1]) + self.bias().view([1, c, 1, 1])
    }
}

impl nn::ModuleT for BatchNorm2d {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        if train {
            if let Some(group) = SYNC_BN.with(|s| s.borrow().clone()) {
                return self.forward_sync(xs, &group);
            }
        }
        self.inner.forward_t(xs, train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::{Module, ModuleT};
    use tch::{Device, Kind};

    #[test]
    fn layout_names_are_the_flag_values() {
        use clap::ValueEnum;
        assert_eq!(Layout::ChannelsLast.to_string(), "channels-last");
        assert_eq!(Layout::Nchw.to_string(), "nchw");
        for (text, want) in [
            ("channels-last", Layout::ChannelsLast),
            ("NHWC", Layout::ChannelsLast),
            ("channels_last", Layout::ChannelsLast),
            ("nchw", Layout::Nchw),
            ("pytorch", Layout::Pytorch),
            ("nchw-operands", Layout::Pytorch),
        ] {
            assert_eq!(Layout::from_str(text, true), Ok(want), "{text}");
        }
        assert!(Layout::from_str("nwhc", true).is_err());
    }

    fn vs() -> nn::VarStore {
        nn::VarStore::new(Device::Cpu)
    }

    #[test]
    fn depthwise_conv_shapes_and_quantized_weight() {
        let vs = vs();
        let config = QConv2dConfig {
            stride: 2,
            padding: 1,
            groups: 8,
            ..Default::default()
        };
        let conv = QConv2d::new(&vs.root(), 8, 8, 3, 4, config);
        assert_eq!(conv.weight().size(), [8, 1, 3, 3]);
        assert!(conv.bias().is_none());
        let x = Tensor::randn([2, 8, 9, 9], (Kind::Float, Device::Cpu));
        let y = conv.forward(&x);
        assert_eq!(y.size(), [2, 8, 5, 5]);
        let want = channels_last(&x).conv2d(
            &channels_last(&dorefa_weight(conv.weight(), 4)),
            None::<Tensor>,
            [2, 2],
            [1, 1],
            [1, 1],
            8,
        );
        assert!(y.equal(&want));
        assert_eq!(
            y.is_contiguous(),
            layout() != Layout::ChannelsLast,
            "output layout"
        );
        // Four bits: every weight on the grid of multiples of 1/7.
        let scaled = conv.quantized_weight() * 7.0;
        assert!((&scaled - scaled.round()).abs().max().double_value(&[]) < 1e-5);
    }

    #[test]
    fn try_new_refuses_bad_profiles_before_making_variables() {
        let vs = vs();
        let conv = |w_bit, groups| {
            let config = QConv2dConfig {
                groups,
                ..Default::default()
            };
            QConv2d::try_new(&vs.root(), 4, 6, 3, w_bit, config).map(|c| c.w_bit())
        };
        assert_eq!(
            conv(17, 1).unwrap_err().to_string(),
            "QConv2d weight: bit-width 17 not supported (expected 1..=16 or 32)"
        );
        assert_eq!(
            conv(4, 4).unwrap_err(),
            LayerError::Groups {
                in_channels: 4,
                out_channels: 6,
                groups: 4
            }
        );
        let err = QConv2d::try_new(&vs.root(), 0, 6, 3, 4, QConv2dConfig::default());
        assert!(matches!(err, Err(LayerError::ConvSizes { .. })));
        let err = QLinear::try_new(&vs.root(), 8, 10, 0, QLinearConfig::default());
        assert!(matches!(err, Err(LayerError::Bits(_))));
        let err = QLinear::try_new(&vs.root(), 8, -1, 4, QLinearConfig::default());
        assert!(matches!(err, Err(LayerError::LinearSizes { .. })));
        assert!(vs.variables().is_empty(), "nothing is made on an error");
        assert_eq!(conv(4, 2).unwrap(), 4);
    }

    #[test]
    fn layout_errors_name_the_variable() {
        let e = LayoutError {
            value: "nwhc".into(),
        };
        assert_eq!(
            e.to_string(),
            "QATC_LAYOUT=\"nwhc\": expected `channels-last`, `nchw` or `pytorch`"
        );
        assert_eq!(Layout::default(), Layout::ChannelsLast);
    }

    #[test]
    fn float_conv_uses_the_raw_weight_and_bias() {
        let vs = vs();
        let config = QConv2dConfig {
            bias: true,
            init: ConvInit::KaimingNormalFanOut,
            ..Default::default()
        };
        let conv = QConv2d::new(&vs.root(), 3, 4, 1, 32, config);
        let x = Tensor::randn([1, 3, 2, 2], (Kind::Float, Device::Cpu));
        let want = channels_last(&x).conv2d(
            &channels_last(conv.weight()),
            conv.bias(),
            [1, 1],
            [0, 0],
            [1, 1],
            1,
        );
        assert!(conv.forward(&x).equal(&want));
        assert_eq!(
            f64::try_from(conv.bias().unwrap().abs().sum(Kind::Float)).unwrap(),
            0.0
        );
    }

    #[test]
    fn conv_gradient_reaches_the_float_weight() {
        let vs = vs();
        let conv = QConv2d::new(&vs.root(), 2, 2, 3, 8, QConv2dConfig::default());
        let x = Tensor::randn([1, 2, 5, 5], (Kind::Float, Device::Cpu));
        conv.forward(&x).sum(Kind::Float).backward();
        assert!(
            conv.weight()
                .grad()
                .abs()
                .sum(Kind::Float)
                .double_value(&[])
                > 0.0
        );
    }

    #[test]
    fn untracked_forward_passes_reuse_the_quantized_weight_until_it_changes() {
        let vs = vs();
        let conv = QConv2d::new(&vs.root(), 2, 3, 3, 4, QConv2dConfig::default());
        let first = tch::no_grad(|| conv.quantized_weight());
        let again = tch::no_grad(|| conv.quantized_weight());
        assert_eq!(first.data_ptr(), again.data_ptr(), "cached");
        assert!(first.equal(&dorefa_weight(conv.weight(), 4)));
        // Tracked (training): a fresh quantized weight with a graph.
        let tracked = conv.quantized_weight();
        assert!(tracked.requires_grad());
        assert_ne!(tracked.data_ptr(), first.data_ptr());
        // An in-place change of the weight (as an optimizer step makes).
        tch::no_grad(|| {
            let _ = conv.weight().shallow_clone().g_mul_scalar_(-2.0);
        });
        let changed = tch::no_grad(|| conv.quantized_weight());
        assert!(changed.equal(&dorefa_weight(conv.weight(), 4)));
        assert!(!changed.equal(&first));
        // Loading a checkpoint copies into the variables: also seen.
        let other = nn::VarStore::new(Device::Cpu);
        let _ = QConv2d::new(&other.root(), 2, 3, 3, 4, QConv2dConfig::default());
        let mut vs = vs;
        vs.copy(&other).unwrap();
        let loaded = tch::no_grad(|| conv.quantized_weight());
        assert!(loaded.equal(&dorefa_weight(conv.weight(), 4)));
        assert!(!loaded.equal(&changed));
        // The eval forward pass uses it.
        let x = Tensor::randn([1, 2, 4, 4], (Kind::Float, Device::Cpu));
        let want = channels_last(&x).conv2d(&loaded, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1);
        assert!(tch::no_grad(|| conv.forward(&x)).equal(&want));
    }

    #[test]
    fn channels_last_keeps_sizes_and_values_and_passes_gradients() {
        let x = Tensor::randn([2, 3, 4, 5], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let y = channels_last(&x);
        assert_eq!(y.size(), [2, 3, 4, 5]);
        assert_eq!(y.stride(), [60, 1, 15, 3]);
        assert!(y.equal(&x));
        // Already channels-last: the same storage, no copy.
        assert_eq!(channels_last(&y).data_ptr(), y.data_ptr());
        // Not 4-D: unchanged.
        let v = Tensor::randn([3, 4], (Kind::Float, Device::Cpu));
        assert_eq!(channels_last(&v).data_ptr(), v.data_ptr());
        (&y * &y).sum(Kind::Float).backward();
        assert!(x.grad().equal(&(&x * 2.0)));
    }

    #[test]
    fn linear_with_seed_init() {
        let vs = vs();
        let config = QLinearConfig {
            init: LinearInit::Normal { std: 0.001 },
            ..Default::default()
        };
        let fc = QLinear::new(&vs.root(), 64, 10, 16, config);
        assert_eq!(fc.weight().size(), [10, 64]);
        assert!(fc.weight().abs().max().double_value(&[]) < 0.01);
        let x = Tensor::randn([3, 64], (Kind::Float, Device::Cpu));
        let want = x.linear(&dorefa_weight(fc.weight(), 16), fc.bias());
        assert!(fc.forward(&x).equal(&want));
    }

    #[test]
    fn batch_norm_starts_as_identity_affine_and_tracks_statistics() {
        let vs = vs();
        let bn = BatchNorm2d::new(&vs.root(), 3);
        assert!(bn
            .weight()
            .equal(&Tensor::ones([3], (Kind::Float, Device::Cpu))));
        assert!(bn
            .bias()
            .equal(&Tensor::zeros([3], (Kind::Float, Device::Cpu))));
        let x = Tensor::randn([4, 3, 2, 2], (Kind::Float, Device::Cpu)) * 3.0 + 1.0;
        let y = bn.forward_t(&x, true);
        let mean = y.mean_dim([0, 2, 3].as_slice(), false, Kind::Float);
        assert!(mean.abs().max().double_value(&[]) < 1e-5);
        // momentum 0.1: running mean moved a tenth of the way to the batch mean.
        let batch_mean = x.mean_dim([0, 2, 3].as_slice(), false, Kind::Float);
        assert!(
            (bn.running_mean() - batch_mean * 0.1)
                .abs()
                .max()
                .double_value(&[])
                < 1e-6
        );
        let named: Vec<String> = vs.variables().into_keys().collect();
        for name in ["weight", "bias", "running_mean", "running_var"] {
            assert!(
                named.iter().any(|n| n == name),
                "{name} missing from {named:?}"
            );
        }
    }
}
