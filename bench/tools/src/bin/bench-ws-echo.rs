//! WebSocket echo backend: every text or binary message is sent back.
//!
//! bench-ws-echo --listen 127.0.0.1:18090

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

fn main() {
    let args = switchyard_bench_tools::Args::parse();
    let listen = args.str("listen", "127.0.0.1:18090");
    switchyard_bench_tools::runtime().block_on(async move {
        let l = tokio::net::TcpListener::bind(&listen).await.expect("bind");
        eprintln!("bench-ws-echo listening on {listen}");
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let cfg = WebSocketConfig::default()
                    .read_buffer_size(16 * 1024)
                    .write_buffer_size(0)
                    .max_message_size(Some(64 << 20));
                let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(s, Some(cfg)).await
                else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    match m {
                        Message::Binary(_) | Message::Text(_) => {
                            if ws.send(m).await.is_err() {
                                break;
                            }
                        }
                        Message::Close(_) => break,
                        _ => {}
                    }
                }
            });
        }
    });
}
