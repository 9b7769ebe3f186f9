//! A TCP proxy whose link can be cut (every open connection is dropped and new ones are
//! refused, as when a database host becomes unreachable) or frozen (connections stay open and
//! nothing flows either way, as with a hung host or a partition that sends no RST).

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Up,
    Cut,
    Frozen,
}

pub struct Proxy {
    pub port: u16,
    link: watch::Sender<Link>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let (link, watching) = watch::channel(Link::Up);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut link = watching.clone();
                if *link.borrow() == Link::Cut {
                    continue; // dropped: the peer sees the connection closed
                }
                tokio::spawn(async move {
                    // Accepted while frozen: held open, never connected onwards.
                    let _ = link.wait_for(|l| *l != Link::Frozen).await;
                    if *link.borrow() == Link::Cut {
                        return;
                    }
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => return,
                        _ = link.wait_for(|l| *l != Link::Up) => {}
                    }
                    // Frozen: both ends stay open and silent; once the link changes again they
                    // are dropped (a connection that lived through a freeze is not trusted).
                    let _ = link.wait_for(|l| *l != Link::Frozen).await;
                });
            }
        });
        Proxy { port, link }
    }

    pub fn cut(&self) {
        let _ = self.link.send(Link::Cut);
    }

    pub fn freeze(&self) {
        let _ = self.link.send(Link::Frozen);
    }

    pub fn restore(&self) {
        let _ = self.link.send(Link::Up);
    }
}
