//! Checking a model's files without building a session, for `check-config`: the tokenizer
//! parses, and the ONNX file decodes as a model whose graph has the inputs and output the spec
//! declares. Only the graph's signature is decoded (protobuf fields the ONNX schema numbers:
//! `ModelProto.graph` 7, `GraphProto.initializer` 5, `input` 11, `output` 12, names 1 and 8);
//! weights are skipped.

use super::ModelSpec;
use crate::models::engine::tokenize::TextEncoder;

#[derive(Clone, PartialEq, prost::Message)]
struct ModelProto {
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct GraphProto {
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<Named8>,
    #[prost(message, repeated, tag = "11")]
    input: Vec<Named1>,
    #[prost(message, repeated, tag = "12")]
    output: Vec<Named1>,
}

/// `ValueInfoProto`: the name is field 1.
#[derive(Clone, PartialEq, prost::Message)]
struct Named1 {
    #[prost(string, tag = "1")]
    name: String,
}

/// `TensorProto`: the name is field 8.
#[derive(Clone, PartialEq, prost::Message)]
struct Named8 {
    #[prost(string, tag = "8")]
    name: String,
}

/// Problems with `spec`'s files, as `field: message`.
pub fn file_problems(spec: &ModelSpec) -> Vec<String> {
    let mut out = Vec::new();
    if !spec.is_complete() {
        // A hub model's files are fetched when it loads, not by a check.
        return out;
    }
    if let Err(e) = TextEncoder::for_spec(spec) {
        out.push(format!("tokenizer: {e:#}"));
    }
    if spec.variants.is_empty()
        && let Err(problem) = check_onnx(spec)
    {
        out.push(format!("onnx: {}: {problem}", spec.onnx.display()));
    }
    for name in spec.variants.keys() {
        if let Some(variant) = spec.with_variant(name)
            && let Err(problem) = check_onnx(&variant)
        {
            out.push(format!("variants.{name}.onnx: {}: {problem}", variant.onnx.display()));
        }
    }
    out
}

fn check_onnx(spec: &ModelSpec) -> Result<(), String> {
    let bytes = std::fs::read(&spec.onnx).map_err(|e| format!("cannot read: {e}"))?;
    let model: ModelProto =
        prost::Message::decode(bytes.as_slice()).map_err(|e| format!("not an ONNX model: {e}"))?;
    let graph = model.graph.ok_or("not an ONNX model: it has no graph")?;
    // Before ONNX IR 4, weights were listed among the inputs too: they are not fed.
    let weights: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<&str> =
        graph.input.iter().map(|i| i.name.as_str()).filter(|name| !weights.contains(name)).collect();
    let outputs: Vec<(&str, Option<usize>)> = graph.output.iter().map(|o| (o.name.as_str(), None)).collect();
    if outputs.is_empty() {
        return Err("not an ONNX model: its graph has no outputs".to_owned());
    }
    spec.plan(&inputs, &outputs).map(drop)
}
