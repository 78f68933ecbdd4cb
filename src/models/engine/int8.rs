//! int8 weights encoded for this CPU. The int8 models scripts/quantize.py builds store their
//! MatMul weights as uint8 with zero point 128, which ONNX Runtime multiplies with its u8 x u8
//! kernels: they widen to 16 bits and give exact integer sums on every x86 CPU. Its u8 x s8
//! kernels are faster, but on CPUs without VNNI (AVX2, AVX-512 without VNNI) they add pairs of
//! products into saturating 16-bit sums (`vpmaddubsw`: 255 x 127 x 2 > 32,767), so the same
//! graph would compute other vectors there. At load, where a probe shows this CPU's u8 x s8
//! MatMul exact (VNNI, AVX-VNNI, AMX), the weights are re-encoded as int8 with zero point 0:
//! the same integers, the faster kernels, the same vectors.
//!
//! The re-encoding works on the protobuf bytes in place (ONNX's field numbers, below): each
//! weight's bytes are XORed with 0x80 (u8 v is s8 v - 128) and its `data_type` byte goes from
//! UINT8 (2) to INT8 (3); nothing changes length, so nothing else is re-encoded.

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
    /// u8 x s8: the weights were re-encoded as int8 (this CPU's u8 x s8 sums are exact).
    Signed,
    /// u8 x u8, as the file stores them: this CPU's u8 x s8 kernel would clip.
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

/// The model's bytes for this CPU: re-encoded when it has portable int8 weights and this CPU's
/// u8 x s8 MatMul is exact. `None` for a model without such weights (or one whose weights
/// cannot be re-encoded safely, which then runs exactly as stored).
pub fn for_this_cpu(env: &Environment, model: &mut [u8]) -> anyhow::Result<Option<Int8Kernels>> {
    let Some(plan) = plan(model)? else {
        return Ok(None);
    };
    if !u8s8_is_exact(env) {
        return Ok(Some(Int8Kernels::Unsigned));
    }
    apply(model, &plan);
    Ok(Some(Int8Kernels::Signed))
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
const TENSOR_NAME: u32 = 8;
const TENSOR_RAW_DATA: u32 = 9;
const TENSOR_DATA_LOCATION: u32 = 14;
const UINT8: u64 = 2;
const INT8: u64 = 3;

/// One protobuf field: its number, and its value's bytes (LEN) or value (VARINT).
struct Field {
    number: u32,
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
        let key = varint(buf, &mut at)?;
        let number = u32::try_from(key >> 3)?;
        let field = match key & 7 {
            0 => {
                let start = at;
                let v = varint(buf, &mut at)?;
                Field { number, bytes: start..at, varint: Some(v) }
            }
            1 | 5 => {
                let len = if key & 7 == 1 { 8 } else { 4 };
                at += len;
                Field { number, bytes: at - len..at, varint: None }
            }
            2 => {
                let len = usize::try_from(varint(buf, &mut at)?)?;
                at += len;
                Field { number, bytes: at - len..at, varint: None }
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

/// What to patch: each tensor's `data_type` byte and raw data.
struct Plan {
    tensors: Vec<(usize, Range<usize>)>,
}

/// The uint8 weights and zero points of the int8 MatMuls whose activation is uint8, if every one
/// of them can be re-encoded: raw data in the file, used by nothing else, zero points all 128.
fn plan(model: &[u8]) -> anyhow::Result<Option<Plan>> {
    let top = fields(model, 0..model.len())?;
    let Some(graph) = top.iter().rev().find(|f| f.number == MODEL_GRAPH) else {
        return Ok(None);
    };
    let graph = fields(model, graph.bytes.clone())?;

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
    if nodes.iter().any(|n| matches!(n.op.as_str(), "If" | "Loop" | "Scan")) {
        return Ok(None);
    }

    struct Tensor {
        data_type: Option<(u64, usize)>,
        raw: Option<Range<usize>>,
        external: bool,
    }
    let mut tensors = HashMap::new();
    for f in graph.iter().filter(|f| f.number == GRAPH_INITIALIZER) {
        let (mut name, mut t) = (String::new(), Tensor { data_type: None, raw: None, external: false });
        for g in fields(model, f.bytes.clone())? {
            match (g.number, g.varint) {
                (TENSOR_DATA_TYPE, Some(v)) => t.data_type = Some((v, g.bytes.start)),
                (TENSOR_NAME, _) => name = text(model, &g),
                (TENSOR_RAW_DATA, None) => t.raw = Some(g.bytes.clone()),
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

    // (weight, zero point) of each int8 MatMul with a uint8 activation.
    let mut weights: HashSet<&str> = HashSet::new();
    let mut zero_points: HashSet<&str> = HashSet::new();
    for n in &nodes {
        let zp_index = match (n.op.as_str(), n.domain.as_str()) {
            ("MatMulIntegerToFloat", "com.microsoft") => 5,
            ("MatMulInteger", "" | "ai.onnx") => 3,
            _ => continue,
        };
        let (Some(b), Some(zp)) = (n.inputs.get(1), n.inputs.get(zp_index)) else { continue };
        if !is_u8(b) || !uint8_activations.contains(n.inputs[0].as_str()) {
            continue;
        }
        weights.insert(b);
        zero_points.insert(zp);
    }
    if weights.is_empty() {
        return Ok(None);
    }
    // Every use of each of those tensors must be one of the MatMuls' own inputs.
    let mut tensors_to_patch = Vec::new();
    for &name in weights.iter().chain(&zero_points) {
        let own_use = |n: &Node, i: usize| {
            matches!(n.op.as_str(), "MatMulIntegerToFloat" | "MatMulInteger")
                && (i == 1 && weights.contains(name) || (i == 3 || i == 5) && zero_points.contains(name))
        };
        let uses_elsewhere = nodes
            .iter()
            .any(|n| n.inputs.iter().enumerate().any(|(i, input)| input == name && !own_use(n, i)));
        let t = &tensors[name];
        let (Some((UINT8, type_at)), Some(raw), false, false) =
            (t.data_type, t.raw.clone(), t.external, uses_elsewhere)
        else {
            return Ok(None);
        };
        if zero_points.contains(name) && model[raw.clone()].iter().any(|&b| b != 128) {
            return Ok(None);
        }
        tensors_to_patch.push((type_at, raw));
    }
    Ok(Some(Plan { tensors: tensors_to_patch }))
}

fn apply(model: &mut [u8], plan: &Plan) {
    for (type_at, raw) in &plan.tensors {
        debug_assert_eq!(u64::from(model[*type_at]), UINT8);
        model[*type_at] = INT8 as u8;
        for b in &mut model[raw.clone()] {
            *b ^= 0x80;
        }
    }
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
    onnx::Tensor { dims: dims.to_vec(), data_type, name: name.into(), raw_data }
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

    #[test]
    fn portable_weights_become_the_same_integers_as_int8_with_zero_point_zero() {
        let mut model = portable_model(vec![1, 128, 200, 255]);
        let plan = plan(&model).unwrap().expect("the weights and their zero point can be re-encoded");
        apply(&mut model, &plan);
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
    }

    #[test]
    fn weights_whose_activation_is_not_known_to_be_uint8_are_left_alone() {
        // The probe's own graph feeds `a` straight from the graph input.
        let mut model: onnx::Model = prost::Message::decode(probe_model(2, 2).as_slice()).unwrap();
        let graph = model.graph.as_mut().unwrap();
        graph.initializer[0] = tensor("b", UINT8 as i32, &[2, 2], vec![1, 2, 3, 4]);
        graph.initializer[4] = tensor("b_zero_point", UINT8 as i32, &[], vec![128]);
        assert!(plan(&prost::Message::encode_to_vec(&model)).unwrap().is_none());
    }

    #[test]
    fn a_zero_point_other_than_128_or_a_weight_used_elsewhere_keeps_the_file_as_it_is() {
        let mut model = decoded(&portable_model(vec![1, 2, 3, 4]));
        model.graph.as_mut().unwrap().initializer[4].raw_data = vec![127];
        assert!(plan(&prost::Message::encode_to_vec(&model)).unwrap().is_none());

        let mut model = decoded(&portable_model(vec![1, 2, 3, 4]));
        let graph = model.graph.as_mut().unwrap();
        graph.node.push(node("Identity", &["b"], "b_again"));
        assert!(plan(&prost::Message::encode_to_vec(&model)).unwrap().is_none());
    }

    #[test]
    fn a_model_without_int8_matmuls_has_nothing_to_re_encode() {
        let model = onnx::Model { ir_version: 9, graph: Some(onnx::Graph::default()), opset_import: vec![] };
        assert!(plan(&prost::Message::encode_to_vec(&model)).unwrap().is_none());
        assert!(fields(&[0x0a, 0x05, 0x01], 0..3).is_err(), "a field past its message is an error");
    }
}
