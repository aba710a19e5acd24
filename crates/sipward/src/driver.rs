//! The tokio UDP driver around the pure core: one socket per interface, one task that
//! owns the [`Gateway`], the clock read here and nowhere else. Media commands the core
//! emits go to the relay thread ([`RelayHandle`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use sipward_core::{Config, Gateway};
use sipward_relay::RelayHandle;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// Largest UDP datagram read; anything longer is truncated by the kernel and then
/// refused by the size limit.
const RECV_BUFFER: usize = 65_535;

struct Received {
    local: SocketAddr,
    remote: SocketAddr,
    data: Vec<u8>,
}

/// Binds every interface and runs the gateway until ctrl-c.
pub(crate) async fn run(config: Config) -> Result<()> {
    let mut sockets: Vec<(SocketAddr, Arc<UdpSocket>)> = Vec::new();
    for zone in &config.zones {
        let socket = UdpSocket::bind(zone.address)
            .await
            .with_context(|| format!("interface {}: cannot bind {}", zone.name, zone.address))?;
        println!(
            "sipward: listening on {} ({}, {})",
            zone.address,
            zone.name,
            if zone.inside { "inside" } else { "outside" }
        );
        sockets.push((zone.address, Arc::new(socket)));
    }
    let (tx, mut rx) = mpsc::channel::<Received>(4096);
    for (local, socket) in &sockets {
        let socket = socket.clone();
        let tx = tx.clone();
        let local = *local;
        tokio::spawn(async move {
            let mut buf = vec![0u8; RECV_BUFFER];
            loop {
                match socket.recv_from(&mut buf).await {
                    Ok((n, remote)) => {
                        let data = buf.get(..n).unwrap_or_default().to_vec();
                        if tx
                            .send(Received {
                                local,
                                remote,
                                data,
                            })
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!(%local, "receive failed: {e}"),
                }
            }
        });
    }
    drop(tx);

    let mut gateway = Gateway::new(config);
    let relay = RelayHandle::spawn().context("cannot start the media relay")?;
    let shutdown = tokio::signal::ctrl_c();
    tokio::pin!(shutdown);
    loop {
        let deadline = gateway.poll_timeout();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            received = rx.recv() => {
                let Some(r) = received else { break };
                gateway.handle_datagram(Instant::now(), r.local, r.remote, &r.data);
            }
            () = sleep => gateway.handle_timeout(Instant::now()),
            _ = &mut shutdown => {
                println!("sipward: shutting down");
                break;
            }
        }
        relay.apply(std::iter::from_fn(|| gateway.poll_media()));
        while let Some(t) = gateway.poll_transmit() {
            if let Some((_, socket)) = sockets.iter().find(|(a, _)| *a == t.local) {
                if let Err(e) = socket.send_to(&t.payload, t.remote).await {
                    tracing::warn!(remote = %t.remote, "send failed: {e}");
                }
            }
        }
    }
    Ok(())
}
