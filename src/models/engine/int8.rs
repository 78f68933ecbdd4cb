//! int8 weights encoded for this CPU. ONNX Runtime multiplies a uint8 activation by a weight
//! with its u8 x u8 kernels (they widen to 16 bits: exact integer sums on every x86 CPU) or its
//! u8 x s8 kernels (faster, but on CPUs without VNNI, AVX2 and AVX-512 without VNNI, they add
//! pairs of products into saturating 16-bit sums, `vpmaddubsw`: 255 x 127 x 2 > 32,767), so an
//! int8 graph can compute other vectors on other CPUs. A probe at start asks this CPU's u8 x s8
//! MatMul whether it is exact (VNNI, AVX-VNNI, AMX), and each model's int8 weights are encoded
//! for it: int8 (zero point shifted by 128 too) where u8 x s8 is exact, uint8 where it would
//! clip. Either way the MatMuls compute the same integers as the file's: the same vectors on
//! every CPU, on the fastest exact kernels. The int8 models scripts/quantize.py builds store
//! uint8 weights (exact anywhere as they are); ONNX Runtime's own dynamic quantization stores
//! int8 ones (a reranker's, say), which become uint8 on a CPU without VNNI.
//!
//! The re-encoding works on the protobuf bytes in place (ONNX's field numbers, below): each
//! weight's and its zero point's bytes are XORed with 0x80 (u8 v is s8 v - 128) and their
//! `data_type` byte switches between UINT8 (2) and INT8 (3); nothing changes length, so nothing
//! else is re-encoded.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::OnceLock;

use ndarray::Array2;
use ort::environment::Environment;
use ort::session::Session;
use ort::value::TensorRef;

/// Which integer kernels a model's int8 MatMuls run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Kernels {
    /// u8 x s8: int8 weights (this CPU's u8 x s8 sums are exact).
    Signed,
    /// u8 x u8: uint8 weights (this CPU's u8 x s8 kernel would clip).
    Unsigned,
}

impl Int8Kernels {
    pub fn as_str(self) -> &'static str {
        match self {
            Int8Kernels::Signed => "u8s8",
            Int8Kernels::Unsigned => "u8u8",
        }
    }
}

/// A model's int8 weights as this CPU needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub kernels: Int8Kernels,
    /// The model re-encoded, where its weights had to change; `None`: load the file as it is.
    pub bytes: Option<Vec<u8>>,
}

/// Encodes `model`'s int8 weights for this CPU. `None` for a model without int8 MatMuls, or
/// whose weights cannot be re-encoded safely (no zero point input, a weight read by other
/// nodes, data outside the file): it then runs exactly as stored, with a warning where that may
/// clip. `model` is only read (a mapped file): it is copied only if weights change, which the
/// models scripts/quantize.py builds never need on a CPU without VNNI.
pub fn for_this_cpu(env: &Environment, model: &[u8]) -> anyhow::Result<Option<Encoded>> {
    let kernels = |exact: bool| if exact { Int8Kernels::Signed } else { Int8Kernels::Unsigned };
    match plan(model)? {
        Plan::None => Ok(None),
        Plan::Unsafe(why) => {
            if !u8s8_is_exact(env) {
                tracing::warn!(
                    why,
                    "int8 weights left as stored: on this CPU (no VNNI) their results may differ from a VNNI CPU's"
                );
            }
            Ok(None)
        }
        Plan::Tensors { graph_length, graph, patches } => {
            let target = if u8s8_is_exact(env) { INT8 } else { UINT8 };
            let kernels = kernels(target == INT8);
            if patches.iter().all(|p| p.data_type == target) {
                return Ok(Some(Encoded { kernels, bytes: None }));
            }
            let mut bytes = model.to_vec();
            let changed = apply(&mut bytes, graph_length, graph, &patches, target);
            Ok(Some(Encoded { kernels, bytes: changed.then_some(bytes) }))
        }
    }
}

/// Whether ONNX Runtime's u8 x s8 integer MatMul gives exact sums on this CPU, probed once per
/// process: a 16 x 64 by 64 x 16 MatMulIntegerToFloat whose products (255 x 127) overflow a
/// 16-bit pair sum. A probe that cannot run counts as inexact: the u8 x u8 encoding is exact
/// everywhere, only slower.
pub fn u8s8_is_exact(env: &Environment) -> bool {
    static EXACT: OnceLock<bool> = OnceLock::new();
    *EXACT.get_or_init(|| match probe(env) {
        Ok(exact) => exact,
        Err(e) => {
            tracing::warn!(error = %e, "int8 probe failed: int8 models run on u8 x u8 kernels");
            false
        }
    })
}

fn probe(env: &Environment) -> anyhow::Result<bool> {
    const M: usize = 16;
    const K: usize = 64;
    let mut session = probe_session(env, &probe_model(K, 16))?;
    let a = Array2::<u8>::from_elem((M, K), 255);
    let outputs = session.run(ort::inputs!["a" => TensorRef::from_array_view(&a)?])?;
    let y = outputs["y"].try_extract_array::<f32>()?;
    // (255 - 128) x 127 summed over K.
    let exact = (K as f32) * 127.0 * 127.0;
    Ok(y.iter().all(|v| (v - exact).abs() < 0.5))
}

// Builder errors carry the (non-Send) builder; `?` in an `ort::Result` function drops it.
fn probe_session(env: &Environment, model: &[u8]) -> ort::Result<Session> {
    Session::builder(env)?
        .with_intra_threads(1)?
        .with_optimization_level(ort::session::builder::GraphOptimizationLevel::Disable)?
        .commit_from_memory(model)
}

// --- Reading and patching ONNX protobuf bytes ---------------------------------------------------

const MODEL_GRAPH: u32 = 7;
const GRAPH_NODE: u32 = 1;
const GRAPH_INITIALIZER: u32 = 5;
const NODE_INPUT: u32 = 1;
const NODE_OUTPUT: u32 = 2;
const NODE_OP_TYPE: u32 = 4;
const NODE_DOMAIN: u32 = 7;
const TENSOR_DATA_TYPE: u32 = 2;
const TENSOR_INT32_DATA: u32 = 5;
const TENSOR_NAME: u32 = 8;
const TENSOR_RAW_DATA: u32 = 9;
const TENSOR_DATA_LOCATION: u32 = 14;
const UINT8: u64 = 2;
const INT8: u64 = 3;

/// One protobuf field: its number, where it starts (its key), and its value's bytes (LEN) or
/// value (VARINT).
struct Field {
    number: u32,
    start: usize,
    bytes: Range<usize>,
    varint: Option<u64>,
}

fn varint(buf: &[u8], at: &mut usize) -> anyhow::Result<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*at).ok_or_else(|| anyhow::anyhow!("truncated varint"))?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok(value);
        }
    }
    anyhow::bail!("varint too long")
}

/// The fields of the message in `buf[range]`, in order.
fn fields(buf: &[u8], range: Range<usize>) -> anyhow::Result<Vec<Field>> {
    let mut out = Vec::new();
    let mut at = range.start;
    while at < range.end {
        let start = at;
        let key = varint(buf, &mut at)?;
        let number = u32::try_from(key >> 3)?;
        let field = match key & 7 {
            0 => {
                let value_start = at;
                let v = varint(buf, &mut at)?;
                Field { number, start, bytes: value_start..at, varint: Some(v) }
            }
            1 | 5 => {
                let len = if key & 7 == 1 { 8 } else { 4 };
                at += len;
                Field { number, start, bytes: at - len..at, varint: None }
            }
            2 => {
                let len = usize::try_from(varint(buf, &mut at)?)?;
                at += len;
                Field { number, start, bytes: at - len..at, varint: None }
            }
            wire => anyhow::bail!("unsupported protobuf wire type {wire}"),
        };
        anyhow::ensure!(at <= range.end, "field {number} runs past its message");
        out.push(field);
    }
    Ok(out)
}

fn text(buf: &[u8], f: &Field) -> String {
    String::from_utf8_lossy(&buf[f.bytes.clone()]).into_owned()
}

/// A weight or zero point to re-encode: the offset of its `data_type` byte, its type there, and
/// where its values are.
struct Patch {
    type_at: usize,
    data_type: u64,
    data: Data,
}

enum Data {
    /// `raw_data`: re-encoded in place.
    Raw(Range<usize>),
    /// `int32_data` (how ONNX Runtime's quantizer stores a scalar zero point): the value's
    /// encoding changes length, so the tensor is written anew with `raw_data`. `field` is the
    /// initializer field, key included, `content` its message.
    Int32 { field: Range<usize>, content: Range<usize>, values: Vec<i64> },
}

enum Plan {
    /// No int8 MatMul with a uint8 activation.
    None,
    /// Some cannot be re-encoded, for this reason.
    Unsafe(&'static str),
    /// Every weight and zero point of them, and the graph field holding them (from its length
    /// to its end), should any be written anew.
    Tensors { graph_length: Range<usize>, graph: Range<usize>, patches: Vec<Patch> },
}

/// The weights and zero points of the int8 MatMuls whose activation is uint8, if every one of
/// them can be re-encoded: raw data in the file, read by nothing else, each weight with a zero
/// point of its own type.
fn plan(model: &[u8]) -> anyhow::Result<Plan> {
    let top = fields(model, 0..model.len())?;
    let Some(graph_field) = top.iter().rev().find(|f| f.number == MODEL_GRAPH) else {
        return Ok(Plan::None);
    };
    let graph = fields(model, graph_field.bytes.clone())?;

    #[derive(Default)]
    struct Node {
        op: String,
        domain: String,
        inputs: Vec<String>,
        outputs: Vec<String>,
    }
    let mut nodes = Vec::new();
    for f in graph.iter().filter(|f| f.number == GRAPH_NODE) {
        let mut node = Node::default();
        for g in fields(model, f.bytes.clone())? {
            match g.number {
                NODE_INPUT => node.inputs.push(text(model, &g)),
                NODE_OUTPUT => node.outputs.push(text(model, &g)),
                NODE_OP_TYPE => node.op = text(model, &g),
                NODE_DOMAIN => node.domain = text(model, &g),
                _ => {}
            }
        }
        nodes.push(node);
    }
    // Subgraphs could read the same tensors where this walk does not look.
    let subgraphs = nodes.iter().any(|n| matches!(n.op.as_str(), "If" | "Loop" | "Scan"));

    struct Tensor {
        data_type: Option<(u64, usize)>,
        raw: Option<Range<usize>>,
        int32: Vec<i64>,
        external: bool,
        field: Range<usize>,
        content: Range<usize>,
    }
    let mut tensors = HashMap::new();
    for f in graph.iter().filter(|f| f.number == GRAPH_INITIALIZER) {
        let mut name = String::new();
        let mut t = Tensor {
            data_type: None,
            raw: None,
            int32: Vec::new(),
            external: false,
            field: f.start..f.bytes.end,
            content: f.bytes.clone(),
        };
        for g in fields(model, f.bytes.clone())? {
            match (g.number, g.varint) {
                (TENSOR_DATA_TYPE, Some(v)) => t.data_type = Some((v, g.bytes.start)),
                (TENSOR_NAME, _) => name = text(model, &g),
                (TENSOR_RAW_DATA, None) => t.raw = Some(g.bytes.clone()),
                (TENSOR_INT32_DATA, Some(v)) => t.int32.push(v as i64),
                (TENSOR_INT32_DATA, None) => {
                    let mut at = g.bytes.start;
                    while at < g.bytes.end {
                        t.int32.push(varint(model, &mut at)? as i64);
                    }
                }
                (TENSOR_DATA_LOCATION, Some(v)) => t.external = v == 1,
                _ => {}
            }
        }
        tensors.insert(name, t);
    }

    // Activations known to be uint8: the outputs of DynamicQuantizeLinear, and of QuantizeLinear
    // whose zero point is uint8 (an initializer, or one reshaped or expanded per row).
    let is_u8 = |name: &str| tensors.get(name).is_some_and(|t| t.data_type.map(|d| d.0) == Some(UINT8));
    let mut producer: HashMap<&str, &Node> = HashMap::new();
    for n in &nodes {
        for output in &n.outputs {
            producer.insert(output, n);
        }
    }
    let u8_zero_point = |name: &str| {
        let mut name = name.to_owned();
        for _ in 0..4 {
            if is_u8(&name) {
                return true;
            }
            match producer.get(name.as_str()) {
                Some(n) if matches!(n.op.as_str(), "Expand" | "Reshape" | "Identity" | "Unsqueeze") => {
                    name = n.inputs[0].clone();
                }
                _ => return false,
            }
        }
        false
    };
    let mut uint8_activations = HashSet::new();
    for n in &nodes {
        let u8_output = (n.op == "QuantizeLinear" && n.inputs.get(2).is_some_and(|zp| u8_zero_point(zp)))
            || n.op == "DynamicQuantizeLinear";
        if u8_output && let Some(y) = n.outputs.first() {
            uint8_activations.insert(y.as_str());
        }
    }

    // The weight and zero point inputs of each int8 MatMul whose activation is uint8
    // (DynamicQuantizeMatMul quantizes its float activation to uint8 itself).
    let int8_type = |name: &str| tensors.get(name).and_then(|t| t.data_type).map(|d| d.0);
    let mut weights: HashSet<&str> = HashSet::new();
    let mut zero_points: HashSet<&str> = HashSet::new();
    let mut missing_zero_point = false;
    for n in &nodes {
        let (zp_index, u8_activation) = match (n.op.as_str(), n.domain.as_str()) {
            ("MatMulIntegerToFloat", "com.microsoft") => {
                (5, uint8_activations.contains(n.inputs[0].as_str()))
            }
            ("MatMulInteger", "" | "ai.onnx") => (3, uint8_activations.contains(n.inputs[0].as_str())),
            ("DynamicQuantizeMatMul", "com.microsoft") => (3, true),
            _ => continue,
        };
        let Some(b) = n.inputs.get(1).filter(|b| matches!(int8_type(b), Some(UINT8 | INT8))) else {
            continue;
        };
        if !u8_activation {
            continue;
        }
        match n.inputs.get(zp_index).filter(|zp| !zp.is_empty()) {
            Some(zp) => {
                weights.insert(b);
                zero_points.insert(zp);
            }
            None => missing_zero_point = true,
        }
    }
    if weights.is_empty() && !missing_zero_point {
        return Ok(Plan::None);
    }
    if missing_zero_point {
        return Ok(Plan::Unsafe("an int8 MatMul has no weight zero point to shift with its weights"));
    }
    if subgraphs {
        return Ok(Plan::Unsafe("the graph has subgraphs, which could read the same weights"));
    }
    // Every use of each of those tensors must be one of the MatMuls' own weight or zero point.
    let mut patches = Vec::new();
    for &name in weights.iter().chain(&zero_points) {
        let own_use = |n: &Node, i: usize| {
            let zp_index = if n.op == "MatMulIntegerToFloat" { 5 } else { 3 };
            matches!(n.op.as_str(), "MatMulIntegerToFloat" | "MatMulInteger" | "DynamicQuantizeMatMul")
                && (i == 1 && weights.contains(name) || i == zp_index && zero_points.contains(name))
        };
        let uses_elsewhere = nodes
            .iter()
            .any(|n| n.inputs.iter().enumerate().any(|(i, input)| input == name && !own_use(n, i)));
        if uses_elsewhere {
            return Ok(Plan::Unsafe("an int8 weight or zero point is also read by another node"));
        }
        let t = &tensors[name];
        let data = match (&t.raw, t.int32.is_empty(), t.external) {
            (Some(raw), true, false) => Data::Raw(raw.clone()),
            (None, false, false) => {
                Data::Int32 { field: t.field.clone(), content: t.content.clone(), values: t.int32.clone() }
            }
            _ => return Ok(Plan::Unsafe("an int8 weight or zero point is not data in the file")),
        };
        match t.data_type {
            Some((data_type @ (UINT8 | INT8), type_at)) => patches.push(Patch { type_at, data_type, data }),
            _ => return Ok(Plan::Unsafe("an int8 weight or zero point has no 8-bit type")),
        }
    }
    let graph_length = graph_field.start + 1..graph_field.bytes.start;
    Ok(Plan::Tensors { graph_length, graph: graph_field.bytes.clone(), patches })
}

/// Re-encodes every patch not already of `target` type (the same integers): raw data in place,
/// `int32_data` tensors written anew (and the graph's length with them). Whether any changed.
fn apply(
    model: &mut Vec<u8>,
    graph_length: Range<usize>,
    graph: Range<usize>,
    patches: &[Patch],
    target: u64,
) -> bool {
    let mut changed = false;
    let mut rewritten: Vec<(Range<usize>, Vec<u8>)> = Vec::new();
    for patch in patches.iter().filter(|p| p.data_type != target) {
        changed = true;
        match &patch.data {
            Data::Raw(raw) => {
                debug_assert_eq!(u64::from(model[patch.type_at]), patch.data_type);
                model[patch.type_at] = target as u8;
                for b in &mut model[raw.clone()] {
                    *b ^= 0x80;
                }
            }
            Data::Int32 { field, content, values } => {
                let bytes: Vec<u8> = values.iter().map(|&v| (v as u8) ^ 0x80).collect();
                rewritten.push((field.clone(), initializer(model, content.clone(), target, &bytes)));
            }
        }
    }
    if rewritten.is_empty() {
        return changed;
    }
    // The graph anew: its fields as they are but for the rewritten initializers.
    rewritten.sort_by_key(|(field, _)| field.start);
    let mut content = Vec::with_capacity(graph.len() + 64);
    let mut at = graph.start;
    for (field, bytes) in &rewritten {
        content.extend_from_slice(&model[at..field.start]);
        content.extend_from_slice(bytes);
        at = field.end;
    }
    content.extend_from_slice(&model[at..graph.end]);
    let mut out = Vec::with_capacity(model.len() + 64);
    out.extend_from_slice(&model[..graph_length.start]);
    put_varint(&mut out, content.len() as u64);
    out.extend_from_slice(&content);
    out.extend_from_slice(&model[graph.end..]);
    *model = out;
    true
}

/// An initializer field (key included) with the tensor at `content` of `model`, as `data_type`
/// with `raw` as its data: every other field kept as it was.
fn initializer(model: &[u8], content: Range<usize>, data_type: u64, raw: &[u8]) -> Vec<u8> {
    let mut tensor = Vec::with_capacity(content.len() + raw.len() + 8);
    for f in fields(model, content).expect("parsed before") {
        if !matches!(f.number, TENSOR_DATA_TYPE | TENSOR_INT32_DATA | TENSOR_RAW_DATA) {
            tensor.extend_from_slice(&model[f.start..f.bytes.end]);
        }
    }
    put_varint(&mut tensor, u64::from(TENSOR_DATA_TYPE) << 3);
    put_varint(&mut tensor, data_type);
    put_varint(&mut tensor, (u64::from(TENSOR_RAW_DATA) << 3) | 2);
    put_varint(&mut tensor, raw.len() as u64);
    tensor.extend_from_slice(raw);
    let mut field = Vec::with_capacity(tensor.len() + 8);
    put_varint(&mut field, (u64::from(GRAPH_INITIALIZER) << 3) | 2);
    put_varint(&mut field, tensor.len() as u64);
    field.extend_from_slice(&tensor);
    field
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

// --- The probe's model ---------------------------------------------------------------------------

/// ONNX messages, only the fields the probe's model needs (encoding only).
mod onnx {
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Model {
        #[prost(int64, tag = "1")]
        pub ir_version: i64,
        #[prost(message, optional, tag = "7")]
        pub graph: Option<Graph>,
        #[prost(message, repeated, tag = "8")]
        pub opset_import: Vec<OpsetId>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct OpsetId {
        #[prost(string, tag = "1")]
        pub domain: String,
        #[prost(int64, tag = "2")]
        pub version: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Graph {
        #[prost(message, repeated, tag = "1")]
        pub node: Vec<Node>,
        #[prost(string, tag = "2")]
        pub name: String,
        #[prost(message, repeated, tag = "5")]
        pub initializer: Vec<Tensor>,
        #[prost(message, repeated, tag = "11")]
        pub input: Vec<ValueInfo>,
        #[prost(message, repeated, tag = "12")]
        pub output: Vec<ValueInfo>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Node {
        #[prost(string, repeated, tag = "1")]
        pub input: Vec<String>,
        #[prost(string, repeated, tag = "2")]
        pub output: Vec<String>,
        #[prost(string, tag = "4")]
        pub op_type: String,
        #[prost(string, tag = "7")]
        pub domain: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Tensor {
        #[prost(int64, repeated, tag = "1")]
        pub dims: Vec<i64>,
        #[prost(int32, tag = "2")]
        pub data_type: i32,
        #[prost(int32, repeated, tag = "5")]
        pub int32_data: Vec<i32>,
        #[prost(string, tag = "8")]
        pub name: String,
        #[prost(bytes = "vec", tag = "9")]
        pub raw_data: Vec<u8>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct ValueInfo {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub r#type: Option<Type>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Type {
        #[prost(message, optional, tag = "1")]
        pub tensor_type: Option<TensorType>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct TensorType {
        #[prost(int32, tag = "1")]
        pub elem_type: i32,
        #[prost(message, optional, tag = "2")]
        pub shape: Option<Shape>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Shape {
        #[prost(message, repeated, tag = "1")]
        pub dim: Vec<Dim>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Dim {
        #[prost(int64, optional, tag = "1")]
        pub dim_value: Option<i64>,
        #[prost(string, optional, tag = "2")]
        pub dim_param: Option<String>,
    }
}

const FLOAT: i32 = 1;

fn tensor(name: &str, data_type: i32, dims: &[i64], raw_data: Vec<u8>) -> onnx::Tensor {
    onnx::Tensor { dims: dims.to_vec(), data_type, int32_data: Vec::new(), name: name.into(), raw_data }
}

fn value_info(name: &str, elem_type: i32, dims: &[Option<i64>]) -> onnx::ValueInfo {
    let dim = dims
        .iter()
        .map(|d| onnx::Dim { dim_value: *d, dim_param: d.is_none().then(|| "rows".to_owned()) })
        .collect();
    let tensor_type = onnx::TensorType { elem_type, shape: Some(onnx::Shape { dim }) };
    onnx::ValueInfo { name: name.into(), r#type: Some(onnx::Type { tensor_type: Some(tensor_type) }) }
}

/// `y = MatMulIntegerToFloat(a, b)`: `a` uint8 [rows, k] with zero point 128, `b` int8 [k, n]
/// all 127 with zero point 0, unit scales.
fn probe_model(k: usize, n: usize) -> Vec<u8> {
    let (k, n) = (k as i64, n as i64);
    let node = onnx::Node {
        input: ["a", "b", "a_scale", "b_scale", "a_zero_point", "b_zero_point"].map(String::from).to_vec(),
        output: vec!["y".into()],
        op_type: "MatMulIntegerToFloat".into(),
        domain: "com.microsoft".into(),
    };
    let graph = onnx::Graph {
        node: vec![node],
        name: "int8_probe".into(),
        initializer: vec![
            tensor("b", INT8 as i32, &[k, n], vec![127; (k * n) as usize]),
            tensor("a_scale", FLOAT, &[], 1f32.to_le_bytes().to_vec()),
            tensor("b_scale", FLOAT, &[n], 1f32.to_le_bytes().repeat(n as usize)),
            tensor("a_zero_point", UINT8 as i32, &[], vec![128]),
            tensor("b_zero_point", INT8 as i32, &[], vec![0]),
        ],
        input: vec![value_info("a", UINT8 as i32, &[None, Some(k)])],
        output: vec![value_info("y", FLOAT, &[None, Some(n)])],
    };
    let model = onnx::Model {
        ir_version: 9,
        graph: Some(graph),
        opset_import: vec![
            onnx::OpsetId { domain: String::new(), version: 17 },
            onnx::OpsetId { domain: "com.microsoft".into(), version: 1 },
        ],
    };
    prost::Message::encode_to_vec(&model)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(op: &str, inputs: &[&str], output: &str) -> onnx::Node {
        onnx::Node {
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: vec![output.into()],
            op_type: op.into(),
            domain: String::new(),
        }
    }

    /// The probe's graph with uint8 weights and zero point 128 (the portable encoding), plus a
    /// QuantizeLinear producing its activation with zero points expanded per row, as
    /// scripts/quantize.py writes them.
    fn portable_model(weights: Vec<u8>) -> Vec<u8> {
        let mut model: onnx::Model = prost::Message::decode(probe_model(2, 2).as_slice()).unwrap();
        let graph = model.graph.as_mut().unwrap();
        graph.node[0].input[0] = "a_q".into();
        graph.node.insert(0, node("Expand", &["a_zero_point", "rows"], "a_zero_points"));
        graph.node.insert(1, node("QuantizeLinear", &["a", "a_scale", "a_zero_points"], "a_q"));
        graph.initializer[0] = tensor("b", UINT8 as i32, &[2, 2], weights);
        graph.initializer[4] = tensor("b_zero_point", UINT8 as i32, &[], vec![128]);
        prost::Message::encode_to_vec(&model)
    }

    fn decoded(bytes: &[u8]) -> onnx::Model {
        prost::Message::decode(bytes).unwrap()
    }

    /// Plans and applies: whether the bytes changed.
    fn encode(model: &mut Vec<u8>, target: u64) -> bool {
        match plan(model).unwrap() {
            Plan::Tensors { graph_length, graph, patches } => {
                apply(model, graph_length, graph, &patches, target)
            }
            Plan::None => panic!("no int8 MatMul found"),
            Plan::Unsafe(why) => panic!("unsafe: {why}"),
        }
    }

    #[test]
    fn portable_weights_become_the_same_integers_as_int8_with_zero_point_zero() {
        let mut model = portable_model(vec![1, 128, 200, 255]);
        assert!(encode(&mut model, INT8));
        let graph = decoded(&model).graph.unwrap();
        let b = &graph.initializer[0];
        assert_eq!(b.data_type, INT8 as i32);
        let signed: Vec<i16> = b.raw_data.iter().map(|&v| i16::from(v as i8)).collect();
        assert_eq!(signed, [1 - 128, 0, 200 - 128, 255 - 128]);
        let zp = &graph.initializer[4];
        assert_eq!((zp.data_type, zp.raw_data.as_slice()), (INT8 as i32, &[0u8][..]));
        // Nothing else moved: the activation's zero point is still uint8 128.
        assert_eq!(graph.initializer[3].raw_data, [128]);
        assert_eq!(graph.initializer[3].data_type, UINT8 as i32);
        // And back, for a CPU whose u8 x s8 kernel would clip: the bytes as they were.
        assert!(encode(&mut model, UINT8));
        assert_eq!(decoded(&model).graph.unwrap().initializer[0].raw_data, [1, 128, 200, 255]);
        assert!(!encode(&mut model, UINT8), "already uint8: nothing to do");
    }

    #[test]
    fn weights_whose_activation_is_not_known_to_be_uint8_are_left_alone() {
        // The probe's own graph feeds `a` straight from the graph input.
        let mut model: onnx::Model = prost::Message::decode(probe_model(2, 2).as_slice()).unwrap();
        let graph = model.graph.as_mut().unwrap();
        graph.initializer[0] = tensor("b", UINT8 as i32, &[2, 2], vec![1, 2, 3, 4]);
        graph.initializer[4] = tensor("b_zero_point", UINT8 as i32, &[], vec![128]);
        assert!(matches!(plan(&prost::Message::encode_to_vec(&model)).unwrap(), Plan::None));
    }

    #[test]
    fn any_zero_point_shifts_with_its_weights_but_a_weight_read_elsewhere_stays() {
        let mut model = decoded(&portable_model(vec![1, 2, 3, 4]));
        model.graph.as_mut().unwrap().initializer[4].raw_data = vec![127];
        let mut bytes = prost::Message::encode_to_vec(&model);
        assert!(encode(&mut bytes, INT8));
        let zp = &decoded(&bytes).graph.unwrap().initializer[4];
        assert_eq!((zp.data_type, zp.raw_data[0] as i8), (INT8 as i32, -1), "uint8 127 is int8 127 - 128");

        let mut model = decoded(&portable_model(vec![1, 2, 3, 4]));
        let graph = model.graph.as_mut().unwrap();
        graph.node.push(node("Identity", &["b"], "b_again"));
        assert!(matches!(plan(&prost::Message::encode_to_vec(&model)).unwrap(), Plan::Unsafe(_)));
    }

    #[test]
    fn a_zero_point_in_int32_data_is_written_anew_and_the_graph_still_reads() {
        // As ONNX Runtime's quantizer writes them: int8 weights, the zero point in int32_data.
        let mut model = decoded(&portable_model(vec![1, 2, 3, 4]));
        let graph = model.graph.as_mut().unwrap();
        graph.initializer[0] = tensor("b", INT8 as i32, &[2, 2], vec![0xff, 0x01, 0x80, 0x7f]);
        graph.initializer[4] =
            onnx::Tensor { int32_data: vec![0], ..tensor("b_zero_point", INT8 as i32, &[], vec![]) };
        let mut bytes = prost::Message::encode_to_vec(&model);
        assert!(encode(&mut bytes, UINT8), "int8 weights become uint8 where u8 x s8 would clip");
        let graph = decoded(&bytes).graph.unwrap();
        assert_eq!(
            (graph.initializer[0].data_type, graph.initializer[0].raw_data.as_slice()),
            (UINT8 as i32, &[0x7f, 0x81, 0x00, 0xff][..])
        );
        let zp = &graph.initializer[4];
        assert_eq!(
            (zp.data_type, zp.raw_data.as_slice(), zp.int32_data.len()),
            (UINT8 as i32, &[128u8][..], 0)
        );
        assert_eq!((zp.name.as_str(), zp.dims.len()), ("b_zero_point", 0), "the rest of the tensor kept");
        // The other initializers and the nodes are untouched by the rewrite.
        assert_eq!(graph.initializer[3].raw_data, [128]);
        assert_eq!(graph.node.len(), 3);
        // And back again: now raw data, re-encoded in place.
        assert!(encode(&mut bytes, INT8));
        assert_eq!(decoded(&bytes).graph.unwrap().initializer[4].raw_data, [0]);
    }

    #[test]
    fn a_model_without_int8_matmuls_has_nothing_to_re_encode() {
        let model = onnx::Model { ir_version: 9, graph: Some(onnx::Graph::default()), opset_import: vec![] };
        assert!(matches!(plan(&prost::Message::encode_to_vec(&model)).unwrap(), Plan::None));
        assert!(fields(&[0x0a, 0x05, 0x01], 0..3).is_err(), "a field past its message is an error");
    }
}
