//! Node status storage: plain `status.nodes`, or `status.compressedNodes` when the object grew
//! past Argo's size limit (base64 of gzip, zstd or brotli JSON, told apart by magic bytes as
//! Argo's packer does), or offloaded to Argo's database.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::error::InputError;
use crate::model::{NodeStatus, Workflow};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// Default of `--max-node-status-bytes`, the most decompressed node status artgc reads per
/// Workflow: a few KB of `compressedNodes` can inflate to gigabytes, and one such Workflow
/// must not take the process down. The front ends hand the flag's value to [`unpack`] and
/// [`decompress_bounded`]; anything else that decompresses is bounded by this.
/// Argo objects are capped near 1.5 MiB (etcd), compressed; 8 MiB is ~20,000 nodes, and
/// parsed it takes some 500 MiB, which the chart's memory limit allows for one at a time.
pub const DEFAULT_MAX_DECOMPRESSED: u64 = 8 * 1024 * 1024;

fn read_bounded(mut r: impl Read, what: &str, limit: u64) -> Result<Vec<u8>, String> {
    let limit = limit.max(1);
    let mut out = Vec::new();
    (&mut r)
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("{what}: {e}"))?;
    if out.len() as u64 > limit {
        return Err(format!(
            "decompresses to more than {limit} bytes (--max-node-status-bytes); not read"
        ));
    }
    Ok(out)
}

pub use crate::model::NodeEncoding;

/// The node map of a workflow and how it was stored.
#[derive(Debug, Clone)]
pub struct Nodes {
    pub nodes: BTreeMap<String, NodeStatus>,
    pub encoding: NodeEncoding,
}

/// Reads `compressedNodes` into `nodes`, once, as the object is read (`limit`: the
/// `--max-node-status-bytes` value): every later reader of the pass finds them there. A
/// failure is kept, for [`workflow_nodes`] to report.
pub fn unpack(wf: &mut Workflow, limit: u64) {
    let status = &mut wf.status;
    if status.unpacked.is_some() || status.nodes.as_ref().is_some_and(|n| !n.is_empty()) {
        return;
    }
    let Some(packed) = status.compressed_nodes.as_deref().filter(|s| !s.is_empty()) else {
        return;
    };
    match read_packed(packed, limit) {
        Ok((nodes, encoding)) => {
            status.nodes = Some(nodes);
            status.compressed_nodes = None;
            status.unpacked = Some(Ok(encoding));
        }
        Err(reason) => status.unpacked = Some(Err(reason)),
    }
}

fn read_packed(
    packed: &str,
    limit: u64,
) -> Result<(BTreeMap<String, NodeStatus>, NodeEncoding), String> {
    let (json, encoding) = decompress_bounded(packed, limit)?;
    let nodes = serde_json::from_slice::<BTreeMap<String, NodeStatus>>(&json)
        .map_err(|e| format!("decompressed data is not a node map: {e}"))?;
    Ok((nodes, encoding))
}

/// Reads a workflow's node map, whichever way it is stored.
pub fn workflow_nodes(wf: &Workflow) -> Result<Nodes, InputError> {
    let status = &wf.status;
    let field = |reason: String| InputError::Field {
        field: "status.compressedNodes".into(),
        reason,
    };
    if let Some(Err(reason)) = &status.unpacked {
        return Err(field(reason.clone()));
    }
    if let Some(nodes) = &status.nodes
        && !nodes.is_empty()
    {
        let encoding = match &status.unpacked {
            Some(Ok(e)) => *e,
            _ => NodeEncoding::Plain,
        };
        return Ok(Nodes {
            nodes: nodes.clone(),
            encoding,
        });
    }
    // Not read through `unpack` (a typed object built in place): read now, within the default.
    if let Some(packed) = status.compressed_nodes.as_deref().filter(|s| !s.is_empty()) {
        let (nodes, encoding) = read_packed(packed, DEFAULT_MAX_DECOMPRESSED).map_err(field)?;
        return Ok(Nodes { nodes, encoding });
    }
    if let Some(version) = status
        .offload_node_status_version
        .as_deref()
        .filter(|v| !v.is_empty())
    {
        return Err(InputError::Offloaded {
            version: version.to_string(),
        });
    }
    Ok(Nodes {
        nodes: BTreeMap::new(),
        encoding: NodeEncoding::Plain,
    })
}

/// [`decompress_bounded`] within [`DEFAULT_MAX_DECOMPRESSED`].
pub fn decompress(packed: &str) -> Result<(Vec<u8>, NodeEncoding), String> {
    decompress_bounded(packed, DEFAULT_MAX_DECOMPRESSED)
}

/// Decodes `status.compressedNodes` to JSON bytes, detecting the compression by magic bytes;
/// more than `limit` bytes is an error.
pub fn decompress_bounded(packed: &str, limit: u64) -> Result<(Vec<u8>, NodeEncoding), String> {
    let raw = STANDARD
        .decode(packed.trim())
        .map_err(|e| format!("not valid base64: {e}"))?;
    let (out, encoding) = if raw.starts_with(&GZIP_MAGIC) {
        let d = flate2::read::GzDecoder::new(raw.as_slice());
        (read_bounded(d, "gzip", limit)?, NodeEncoding::Gzip)
    } else if raw.starts_with(&ZSTD_MAGIC) {
        let d =
            zstd::stream::read::Decoder::new(raw.as_slice()).map_err(|e| format!("zstd: {e}"))?;
        (read_bounded(d, "zstd", limit)?, NodeEncoding::Zstd)
    } else {
        let d = brotli::Decompressor::new(raw.as_slice(), 64 * 1024);
        (read_bounded(d, "brotli", limit)?, NodeEncoding::Brotli)
    };
    Ok((out, encoding))
}

/// Encodes JSON bytes the way Argo stores `status.compressedNodes`.
pub fn compress(json: &[u8], encoding: NodeEncoding) -> std::io::Result<String> {
    let raw = match encoding {
        NodeEncoding::Plain => json.to_vec(),
        NodeEncoding::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(json)?;
            enc.finish()?
        }
        NodeEncoding::Zstd => zstd::stream::encode_all(json, 3)?,
        NodeEncoding::Brotli => {
            let mut out = Vec::new();
            {
                let mut enc = brotli::CompressorWriter::new(&mut out, 64 * 1024, 5, 22);
                enc.write_all(json)?;
            }
            out
        }
    };
    Ok(STANDARD.encode(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_every_encoding() {
        let json = br#"{"n1":{"id":"n1","type":"Pod"}}"#;
        for enc in [NodeEncoding::Gzip, NodeEncoding::Zstd, NodeEncoding::Brotli] {
            let packed = compress(json, enc).unwrap();
            let (back, seen) = decompress(&packed).unwrap();
            assert_eq!(seen, enc);
            assert_eq!(back, json);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decompress("!!!").unwrap_err().contains("base64"));
        // valid base64, gzip magic, truncated body
        let bad = STANDARD.encode([0x1f, 0x8b, 0x08, 0x00]);
        assert!(decompress(&bad).unwrap_err().starts_with("gzip"));
    }
}

/// Past this, the offloaded-deleted annotation is stored gzipped (annotations share 256 KiB).
const MARKS_PLAIN_MAX: usize = 16 * 1024;

/// The `node/artifact` lines of an [`crate::model::ANNOTATION_OFFLOADED_DELETED`] value.
pub fn offloaded_marks(value: &str) -> Result<Vec<String>, String> {
    let text = match value.strip_prefix("gzip:") {
        None => value.to_string(),
        Some(packed) => {
            let raw = STANDARD
                .decode(packed.trim())
                .map_err(|e| format!("not valid base64: {e}"))?;
            let out = read_bounded(
                flate2::read::GzDecoder::new(raw.as_slice()),
                "gzip",
                DEFAULT_MAX_DECOMPRESSED,
            )?;
            String::from_utf8(out).map_err(|e| e.to_string())?
        }
    };
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// The annotation value holding `lines`, gzipped when long.
pub fn offloaded_marks_value(lines: &[String]) -> Result<String, String> {
    let text = lines.join("\n");
    if text.len() <= MARKS_PLAIN_MAX {
        return Ok(text);
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(text.as_bytes()).map_err(|e| e.to_string())?;
    let raw = gz.finish().map_err(|e| e.to_string())?;
    Ok(format!("gzip:{}", STANDARD.encode(raw)))
}

/// Puts the nodes read from Argo's database (`nodes_json`, the `argo_workflows.nodes` text) into
/// `wf`, and marks `deleted` the artifacts artgc recorded in the offloaded-deleted annotation.
/// The read is bounded as decompressed node status is (`--max-node-status-bytes`).
pub fn hydrate(wf: &mut Workflow, nodes_json: &str, limit: u64) -> Result<(), InputError> {
    let version = wf
        .status
        .offload_node_status_version
        .clone()
        .unwrap_or_default();
    let field = || format!("offloaded nodes (status.offloadNodeStatusVersion {version})");

    if nodes_json.len() as u64 > limit {
        return Err(InputError::Field {
            field: field(),
            reason: format!("more than {limit} bytes (--max-node-status-bytes); not read"),
        });
    }
    let mut nodes: BTreeMap<String, NodeStatus> =
        serde_json::from_str(nodes_json).map_err(|e| InputError::Field {
            field: field(),
            reason: format!("not a node map: {e}"),
        })?;
    let marks = match wf.annotation(crate::model::ANNOTATION_OFFLOADED_DELETED) {
        Some(v) => offloaded_marks(v).map_err(|reason| InputError::Field {
            field: format!(
                "metadata.annotations[{}]",
                crate::model::ANNOTATION_OFFLOADED_DELETED
            ),
            reason,
        })?,
        None => Vec::new(),
    };
    for mark in &marks {
        let Some((node, name)) = mark.rsplit_once('/') else {
            continue;
        };
        let arts = nodes
            .get_mut(node)
            .and_then(|n| n.outputs.as_mut())
            .map(|o| o.artifacts.iter_mut());
        for art in arts.into_iter().flatten().filter(|a| a.name == name) {
            art.deleted = true;
        }
    }
    wf.status.nodes = Some(nodes);
    Ok(())
}

/// Whether `wf`'s nodes are in Argo's database only (and not yet put back by [`hydrate`]).
pub fn is_offloaded(wf: &Workflow) -> bool {
    let status = &wf.status;
    status.nodes.as_ref().is_none_or(|n| n.is_empty())
        && status.compressed_nodes.as_deref().is_none_or(str::is_empty)
        && status
            .offload_node_status_version
            .as_deref()
            .is_some_and(|v| !v.is_empty())
}

#[cfg(test)]
mod offloaded_tests {
    use super::*;

    fn offloaded(annotation: Option<&str>) -> Workflow {
        let mut v = serde_json::json!({
            "metadata": {"name": "w", "namespace": "ns", "uid": "u1"},
            "status": {"offloadNodeStatusVersion": "fnv:1", "phase": "Succeeded"}
        });
        if let Some(a) = annotation {
            v["metadata"]["annotations"] =
                serde_json::json!({crate::model::ANNOTATION_OFFLOADED_DELETED: a});
        }
        serde_json::from_value(v).unwrap()
    }

    const NODES: &str = r#"{"n1":{"id":"n1","name":"w","type":"Pod","outputs":{"artifacts":[
        {"name":"a","s3":{"key":"k/a"}},{"name":"b","s3":{"key":"k/b"}}]}}}"#;

    #[test]
    fn unpacking_reads_compressed_nodes_once_within_the_bound_given() {
        let json = br#"{"n1":{"id":"n1","name":"w","type":"Pod"}}"#;
        let packed = compress(json, NodeEncoding::Zstd).unwrap();
        let typed = |packed: &str| -> Workflow {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "w", "namespace": "ns"},
                "status": {"compressedNodes": packed}}))
            .unwrap()
        };
        let mut wf = typed(&packed);
        unpack(&mut wf, 1 << 20);
        assert!(wf.status.compressed_nodes.is_none(), "read into nodes");
        let nodes = workflow_nodes(&wf).unwrap();
        assert_eq!(
            nodes.encoding,
            NodeEncoding::Zstd,
            "written back as it came"
        );
        assert_eq!(nodes.nodes.keys().collect::<Vec<_>>(), ["n1"]);
        // A bound smaller than the nodes: the error is kept for every later reader.
        let mut small = typed(&packed);
        unpack(&mut small, 8);
        let e = workflow_nodes(&small).unwrap_err().to_string();
        assert!(e.contains("decompresses to more than 8 bytes"), "{e}");
        // Not unpacked (built in place): read within the default.
        assert_eq!(
            workflow_nodes(&typed(&packed)).unwrap().encoding,
            NodeEncoding::Zstd
        );
    }

    #[test]
    fn hydrated_nodes_carry_artgcs_marks() {
        let mut wf = offloaded(Some("n1/b\nn9/x"));
        assert!(is_offloaded(&wf));
        assert!(matches!(
            workflow_nodes(&wf),
            Err(InputError::Offloaded { .. })
        ));
        hydrate(&mut wf, NODES, DEFAULT_MAX_DECOMPRESSED).unwrap();
        assert!(!is_offloaded(&wf));
        let nodes = workflow_nodes(&wf).unwrap();
        let arts = &nodes.nodes["n1"].outputs.as_ref().unwrap().artifacts;
        let deleted: Vec<(&str, bool)> =
            arts.iter().map(|a| (a.name.as_str(), a.deleted)).collect();
        assert_eq!(deleted, [("a", false), ("b", true)]);
    }

    #[test]
    fn what_does_not_hydrate_says_why() {
        let mut wf = offloaded(None);
        let e = hydrate(&mut wf, "[1, 2]", DEFAULT_MAX_DECOMPRESSED)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "offloaded nodes (status.offloadNodeStatusVersion fnv:1): not a node map"
            ),
            "{e}"
        );
        let mut wf = offloaded(Some("gzip:%%%"));
        let e = hydrate(&mut wf, NODES, DEFAULT_MAX_DECOMPRESSED)
            .unwrap_err()
            .to_string();
        assert!(e.contains("artgc.io/offloaded-deleted"), "{e}");
    }
}
