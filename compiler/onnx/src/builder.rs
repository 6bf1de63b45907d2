//! A small ONNX graph builder over the [`crate::proto`] messages: nodes,
//! initializers (raw little-endian data) and attributes, with every value
//! name checked unique (ONNX requires each value to be produced once).

use crate::proto::{self, AttributeProto, AttributeType, DataType, NodeProto, TensorProto};
use std::collections::HashSet;

/// An integer container type of a quantized tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Container {
    U8,
    I8,
    U16,
    I16,
    I32,
}

impl Container {
    pub fn data_type(self) -> DataType {
        match self {
            Container::U8 => DataType::Uint8,
            Container::I8 => DataType::Int8,
            Container::U16 => DataType::Uint16,
            Container::I16 => DataType::Int16,
            Container::I32 => DataType::Int32,
        }
    }

    /// The container's own range (what QuantizeLinear saturates to).
    pub fn range(self) -> (i64, i64) {
        match self {
            Container::U8 => (0, 255),
            Container::I8 => (-128, 127),
            Container::U16 => (0, 65_535),
            Container::I16 => (-32_768, 32_767),
            Container::I32 => (i32::MIN as i64, i32::MAX as i64),
        }
    }

    /// Little-endian bytes of `v` (in range: the caller clamps).
    fn push(self, out: &mut Vec<u8>, v: i64) {
        match self {
            Container::U8 => out.push(v as u8),
            Container::I8 => out.push(v as i8 as u8),
            Container::U16 => out.extend_from_slice(&(v as u16).to_le_bytes()),
            Container::I16 => out.extend_from_slice(&(v as i16).to_le_bytes()),
            Container::I32 => out.extend_from_slice(&(v as i32).to_le_bytes()),
        }
    }
}

/// Nodes and initializers of one graph, in the order they are added
/// (topological, as the IR's nodes are).
#[derive(Default)]
pub struct Builder {
    pub nodes: Vec<NodeProto>,
    pub initializers: Vec<TensorProto>,
    values: HashSet<String>,
    node_names: HashSet<String>,
}

impl Builder {
    /// Claims a value name; a second claim is a bug in the lowering (every
    /// name derives from a unique IR node name and a fixed suffix).
    fn claim(&mut self, name: &str) {
        let fresh = self.values.insert(name.to_string());
        debug_assert!(fresh, "value `{name}` produced twice");
    }

    /// Marks a graph input's name as taken.
    pub fn input(&mut self, name: &str) {
        self.claim(name);
    }

    /// Adds node `name` (`op_type` of the default domain) reading `inputs`
    /// ("" for an absent optional input) and writing `outputs`.
    pub fn node(
        &mut self,
        op_type: &str,
        name: &str,
        inputs: &[&str],
        outputs: &[&str],
        attribute: Vec<AttributeProto>,
        doc: Option<String>,
    ) {
        self.node_in("", op_type, name, inputs, outputs, attribute, doc);
    }

    /// [`Builder::node`] for an op of `domain` ("" the default domain, else
    /// a custom one such as QONNX's `qonnx.custom_op.general`).
    #[allow(clippy::too_many_arguments)]
    pub fn node_in(
        &mut self,
        domain: &str,
        op_type: &str,
        name: &str,
        inputs: &[&str],
        outputs: &[&str],
        attribute: Vec<AttributeProto>,
        doc: Option<String>,
    ) {
        for o in outputs {
            self.claim(o);
        }
        let fresh = self.node_names.insert(name.to_string());
        debug_assert!(fresh, "node `{name}` added twice");
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            name: Some(name.to_string()),
            op_type: Some(op_type.to_string()),
            domain: (!domain.is_empty()).then(|| domain.to_string()),
            attribute,
            doc_string: doc,
        });
    }

    /// A float32 initializer; returns its name.
    pub fn f32s(&mut self, name: &str, dims: &[i64], values: &[f32]) -> String {
        debug_assert_eq!(dims.iter().product::<i64>(), values.len() as i64);
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.raw(name, dims, DataType::Float, raw)
    }

    /// A float32 scalar initializer.
    pub fn f32_scalar(&mut self, name: &str, v: f32) -> String {
        self.f32s(name, &[], &[v])
    }

    /// An integer initializer in `container`; values must fit it.
    pub fn ints(
        &mut self,
        name: &str,
        container: Container,
        dims: &[i64],
        values: &[i64],
    ) -> String {
        debug_assert_eq!(dims.iter().product::<i64>(), values.len() as i64);
        let (lo, hi) = container.range();
        let mut raw = Vec::with_capacity(values.len() * 4);
        for &v in values {
            debug_assert!(lo <= v && v <= hi, "{v} does not fit {container:?}");
            container.push(&mut raw, v.clamp(lo, hi));
        }
        self.raw(name, dims, container.data_type(), raw)
    }

    /// An int64 initializer (shapes, axes, slice bounds); returns its name.
    pub fn i64s(&mut self, name: &str, values: &[i64]) -> String {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.raw(name, &[values.len() as i64], DataType::Int64, raw)
    }

    /// An integer scalar initializer.
    pub fn int_scalar(&mut self, name: &str, container: Container, v: i64) -> String {
        self.ints(name, container, &[], &[v])
    }

    fn raw(&mut self, name: &str, dims: &[i64], ty: DataType, raw: Vec<u8>) -> String {
        self.claim(name);
        self.initializers.push(TensorProto {
            dims: dims.to_vec(),
            data_type: Some(ty as i32),
            name: Some(name.to_string()),
            raw_data: Some(raw),
            ..Default::default()
        });
        name.to_string()
    }
}

/// An integer attribute.
pub fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

/// A list-of-integers attribute.
pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

/// A string attribute.
pub fn attr_string(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::String as i32),
        s: Some(v.as_bytes().to_vec()),
        ..Default::default()
    }
}

/// A float attribute.
pub fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}

/// A float32 tensor type with the given dimensions (`None`: the symbolic
/// batch dimension `N`).
pub fn value_info(name: &str, dims: &[Option<i64>]) -> proto::ValueInfoProto {
    use proto::tensor_shape_proto::{dimension::Value, Dimension};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(v) => Value::DimValue(*v),
                None => Value::DimParam("N".into()),
            }),
            denotation: None,
        })
        .collect();
    proto::ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(proto::TypeProto {
            value: Some(proto::type_proto::Value::TensorType(
                proto::type_proto::Tensor {
                    elem_type: Some(DataType::Float as i32),
                    shape: Some(proto::TensorShapeProto { dim }),
                },
            )),
            denotation: None,
        }),
        doc_string: None,
    }
}
