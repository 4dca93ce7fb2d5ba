//! A client of the ravi.mesh.v1 contract, generated from proto/ alone, run against a node of
//! any language: `ravi-rust-client http://HOST:PORT AGENT_TYPE`. It checks what a Rust user
//! relies on (Describe, Send with protobuf and JSON payloads, the Multiplex stream, Subscribe
//! with Publish, the ErrorInfo reasons) and prints one line per check; any failure exits 1.

use std::time::Duration;

use prost::Message;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

/// The generated code, in modules that mirror the protobuf packages.
pub mod ravi {
    pub mod mesh {
        pub mod v1 {
            tonic::include_proto!("ravi.mesh.v1");
        }
    }
    pub mod conformance {
        pub mod v1 {
            tonic::include_proto!("ravi.conformance.v1");
        }
    }
}

use ravi::conformance::v1 as conformance;
use ravi::mesh::v1 as mesh;

use mesh::agent_service_client::AgentServiceClient;
use mesh::{call_frame, call_outcome, subscribe_response, topic_filter};

type Client = AgentServiceClient<tonic::transport::Channel>;
type Outcome = Result<String, String>;

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";
const TIMEOUT: Duration = Duration::from_secs(10);

fn payload<M: Message>(type_name: &str, message: &M) -> mesh::Payload {
    mesh::Payload {
        r#type: type_name.into(),
        content_type: PROTOBUF.into(),
        data: message.encode_to_vec(),
    }
}

fn send_request(agent_type: &str, key: &str, payload: mesh::Payload) -> mesh::SendRequest {
    mesh::SendRequest {
        recipient: Some(mesh::AgentId {
            r#type: agent_type.into(),
            key: key.into(),
        }),
        envelope: Some(mesh::Envelope {
            message_id: format!("rust-{key}"),
            payload: Some(payload),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn with_deadline<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(TIMEOUT);
    request
}

fn echoed(response: &mesh::SendResponse) -> Result<conformance::Echoed, String> {
    let result = response.result.as_ref().ok_or("no result")?;
    if result.r#type != "ravi.conformance.v1.Echoed" {
        return Err(format!("result type {}", result.r#type));
    }
    conformance::Echoed::decode(result.data.as_slice()).map_err(|e| e.to_string())
}

async fn describe(client: &mut Client, agent_type: &str) -> Outcome {
    let node = client
        .describe(with_deadline(mesh::DescribeRequest::default()))
        .await
        .map_err(|s| s.to_string())?
        .into_inner()
        .node
        .ok_or("no node")?;
    if !node.agent_types.iter().any(|t| t.agent_type == agent_type) {
        return Err(format!("{agent_type} not hosted by {}", node.node_id));
    }
    Ok(format!(
        "node={} language={} contract={}",
        node.node_id, node.language, node.contract_version
    ))
}

async fn send_protobuf(client: &mut Client, agent_type: &str) -> Outcome {
    let echo = conformance::Echo {
        text: "from rust".into(),
    };
    let request = send_request(
        agent_type,
        "rust-pb",
        payload("ravi.conformance.v1.Echo", &echo),
    );
    let response = client
        .send(with_deadline(request))
        .await
        .map_err(|s| s.to_string())?
        .into_inner();
    let reply = echoed(&response)?;
    if reply.text != "from rust" || reply.message_id != "rust-rust-pb" {
        return Err(format!("reply {reply:?}"));
    }
    Ok(format!("handled by {} ({})", reply.node_id, reply.language))
}

async fn send_json(client: &mut Client, agent_type: &str) -> Outcome {
    let json = mesh::Payload {
        r#type: "ravi.conformance.v1.Echo".into(),
        content_type: "application/json; charset=utf-8".into(),
        data: br#"{"text": "json from rust"}"#.to_vec(),
    };
    let response = client
        .send(with_deadline(send_request(agent_type, "rust-json", json)))
        .await
        .map_err(|s| s.to_string())?
        .into_inner();
    let reply = echoed(&response)?;
    if reply.text != "json from rust" {
        return Err(format!("reply {reply:?}"));
    }
    Ok("json payload answered in protobuf".into())
}

async fn multiplex(client: &mut Client, agent_type: &str) -> Outcome {
    let frames: Vec<mesh::CallFrame> = (1..=3u64)
        .map(|id| mesh::CallFrame {
            call_id: id,
            timeout_millis: 10_000,
            kind: Some(call_frame::Kind::Send(send_request(
                agent_type,
                &format!("rust-mux-{id}"),
                payload(
                    "ravi.conformance.v1.Echo",
                    &conformance::Echo {
                        text: format!("call {id}"),
                    },
                ),
            ))),
        })
        .collect();
    let outbound = tokio_stream::iter(vec![mesh::MultiplexRequest { calls: frames }]);
    let mut inbound = client
        .multiplex(with_deadline(outbound))
        .await
        .map_err(|s| s.to_string())?
        .into_inner();
    let mut answered = std::collections::BTreeMap::new();
    while let Some(response) = inbound.message().await.map_err(|s| s.to_string())? {
        for outcome in response.calls {
            match outcome.outcome {
                Some(call_outcome::Outcome::Result(result)) => {
                    answered.insert(outcome.call_id, echoed(&result)?.text);
                }
                other => return Err(format!("call {} failed: {other:?}", outcome.call_id)),
            }
        }
    }
    let expected: std::collections::BTreeMap<u64, String> =
        (1..=3u64).map(|id| (id, format!("call {id}"))).collect();
    if answered != expected {
        return Err(format!("outcomes {answered:?}"));
    }
    Ok("3 calls on one stream, answered by call id".into())
}

async fn subscribe(client: &mut Client, agent_type: &str) -> Outcome {
    let request = mesh::SubscribeRequest {
        filters: vec![mesh::TopicFilter {
            kind: Some(topic_filter::Kind::TopicType("conformance.events".into())),
        }],
        subscriber_id: "rust".into(),
        accept_batches: false,
    };
    let mut stream = client
        .subscribe(with_deadline(request))
        .await
        .map_err(|s| s.to_string())?
        .into_inner();
    match stream
        .message()
        .await
        .map_err(|s| s.to_string())?
        .and_then(|m| m.kind)
    {
        Some(subscribe_response::Kind::Node(_)) => {}
        other => return Err(format!("first message {other:?}")),
    }
    let publish = mesh::PublishRequest {
        topic: Some(mesh::TopicId {
            r#type: "conformance.events".into(),
            source: "rust".into(),
        }),
        envelope: Some(mesh::Envelope {
            message_id: "rust-pub".into(),
            payload: Some(payload(
                "ravi.conformance.v1.Echo",
                &conformance::Echo {
                    text: "published".into(),
                },
            )),
            ..Default::default()
        }),
        scope: mesh::PublishScope::Mesh as i32,
    };
    client
        .publish(with_deadline(publish))
        .await
        .map_err(|s| s.to_string())?;
    loop {
        match stream
            .message()
            .await
            .map_err(|s| s.to_string())?
            .and_then(|m| m.kind)
        {
            Some(subscribe_response::Kind::Event(event)) => {
                let echo = conformance::Echo::decode(
                    event
                        .envelope
                        .and_then(|e| e.payload)
                        .ok_or("no payload")?
                        .data
                        .as_slice(),
                )
                .map_err(|e| e.to_string())?;
                let _ = agent_type;
                return if echo.text == "published" {
                    Ok("event received".into())
                } else {
                    Err(format!("{echo:?}"))
                };
            }
            Some(subscribe_response::Kind::Node(_)) => continue,
            other => return Err(format!("stream message {other:?}")),
        }
    }
}

fn reason_of(
    status: &Status,
) -> Result<(String, std::collections::HashMap<String, String>), String> {
    let info = status
        .get_details_error_info()
        .ok_or_else(|| format!("no ErrorInfo in {status:?}"))?;
    if info.domain != "ravi.mesh.v1" {
        return Err(format!("domain {}", info.domain));
    }
    Ok((info.reason, info.metadata))
}

async fn error_reasons(client: &mut Client, agent_type: &str) -> Outcome {
    let cases: Vec<(&str, mesh::SendRequest, Code, &str)> = vec![
        (
            "not found",
            send_request(
                "nobody",
                "k",
                payload("ravi.conformance.v1.Echo", &conformance::Echo::default()),
            ),
            Code::NotFound,
            "AGENT_TYPE_NOT_FOUND",
        ),
        (
            "no handler",
            send_request(
                agent_type,
                "k",
                payload("ravi.conformance.v1.Unhandled", &conformance::Unhandled {}),
            ),
            Code::Unimplemented,
            "NO_HANDLER",
        ),
        (
            "bad payload",
            send_request(
                agent_type,
                "k",
                mesh::Payload {
                    r#type: "ravi.conformance.v1.Echo".into(),
                    content_type: JSON.into(),
                    data: b"{nope".to_vec(),
                },
            ),
            Code::InvalidArgument,
            "BAD_PAYLOAD",
        ),
        (
            "handler failed",
            send_request(
                agent_type,
                "k",
                payload(
                    "ravi.conformance.v1.Fail",
                    &conformance::Fail {
                        code: 0,
                        message: "boom".into(),
                    },
                ),
            ),
            Code::Unknown,
            "HANDLER_FAILED",
        ),
    ];
    for (name, request, code, reason) in cases {
        let status = match client.send(with_deadline(request)).await {
            Ok(_) => return Err(format!("{name}: succeeded")),
            Err(status) => status,
        };
        let (got, metadata) = reason_of(&status)?;
        if status.code() != code || got != reason || !metadata.contains_key("node_id") {
            return Err(format!("{name}: {:?} {got} {metadata:?}", status.code()));
        }
    }
    Ok("AGENT_TYPE_NOT_FOUND NO_HANDLER BAD_PAYLOAD HANDLER_FAILED".into())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, address, agent_type] = args.as_slice() else {
        eprintln!("usage: ravi-rust-client http://HOST:PORT AGENT_TYPE");
        std::process::exit(2);
    };
    // AgentServiceClient::connect: the constructor the Connect RPC used to collide with.
    let mut client = match AgentServiceClient::connect(address.clone()).await {
        Ok(client) => client,
        Err(error) => {
            eprintln!("cannot connect to {address}: {error}");
            std::process::exit(1);
        }
    };
    let mut failed = false;
    macro_rules! check {
        ($name:literal, $call:expr) => {
            match tokio::time::timeout(Duration::from_secs(20), $call).await {
                Ok(Ok(detail)) => println!("ok {}: {detail}", $name),
                Ok(Err(error)) => {
                    failed = true;
                    println!("FAIL {}: {error}", $name);
                }
                Err(_) => {
                    failed = true;
                    println!("FAIL {}: no answer within 20 s", $name);
                }
            }
        };
    }
    check!("describe", describe(&mut client, agent_type));
    check!("send-protobuf", send_protobuf(&mut client, agent_type));
    check!("send-json", send_json(&mut client, agent_type));
    check!("multiplex", multiplex(&mut client, agent_type));
    check!("subscribe", subscribe(&mut client, agent_type));
    check!("error-reasons", error_reasons(&mut client, agent_type));
    std::process::exit(i32::from(failed));
}
