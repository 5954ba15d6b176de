//! The gateway's own transport ([`crate::wire`]: WebSocket and long-polling) handing its
//! packets to the handlers.

use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::Value;

use super::handlers::dispatch;
use super::{handshake, on_connect, on_disconnect};
use crate::peer::session::Session;
use crate::peer::{Ack, Peer};
use crate::state::AppState;
use crate::wire::polling::Polls;
use crate::wire::{self, refuse, Conn, Refusal, Settings};

/// The handlers as the [`wire::Handler`] of the gateway's transport.
pub struct Transport {
    st: Arc<AppState>,
    settings: Settings,
    polls: Polls<Arc<Session>>,
}

impl Transport {
    /// The transport's handler for the gateway with state `st`.
    pub fn new(st: Arc<AppState>) -> Arc<Self> {
        Arc::new(Self {
            settings: st.config.transport.clone(),
            st,
            polls: Polls::default(),
        })
    }

    /// Ends every session still on long-polling (the drain), giving their pending GETs up to a
    /// second to carry the Engine.IO close; returns how many.
    pub async fn close_polling(&self) -> usize {
        self.polls
            .close_all(std::time::Duration::from_secs(1))
            .await
    }
}

impl wire::Handler for Transport {
    type User = Arc<Session>;

    fn settings(&self) -> &Settings {
        &self.settings
    }

    fn admit(&self, origin: Option<&[u8]>) -> Result<(), Refusal> {
        self.admit_origin(origin)?;
        self.st.session_refusal().map_or(Ok(()), Err)
    }

    fn admit_origin(&self, origin: Option<&[u8]>) -> Result<(), Refusal> {
        if self.st.config.cors_origins.admits_websocket(origin) {
            Ok(())
        } else {
            Err(refuse(
                StatusCode::FORBIDDEN,
                crate::auth::origins::REFUSED_CODE,
                crate::auth::origins::REFUSED_MESSAGE,
            ))
        }
    }

    fn new_user(&self, polling: bool) -> Arc<Session> {
        Session::new(if polling { "polling" } else { "websocket" })
    }

    fn polls(&self) -> &Polls<Arc<Session>> {
        &self.polls
    }

    fn cors_open(&self) -> bool {
        self.st.config.cors_origins.is_open()
    }

    fn cors_allows(&self, origin: &[u8]) -> bool {
        self.st.config.cors_origins.allows(origin)
    }

    fn connect(&self, conn: Arc<Conn<Arc<Session>>>, auth: Option<Value>) {
        let st = self.st.clone();
        // The handshake waits on the bus (entering the automatic rooms): a task of its own.
        tokio::spawn(async move {
            let peer = Peer::new(conn.clone());
            match handshake(&st, &peer, auth).await {
                Err(code) => conn.refuse_connect(code),
                Ok(entries) => {
                    st.peers.insert(peer.clone());
                    if !conn.accept_connect() {
                        // Ended meanwhile: the transport will not report it, so release here.
                        st.peers.remove(peer.id());
                        on_disconnect(&st, &peer, "transport_close");
                        return;
                    }
                    on_connect(st, peer, entries).await;
                }
            }
        });
    }

    fn event(
        &self,
        conn: &Arc<Conn<Arc<Session>>>,
        name: String,
        data: Option<Value>,
        ack: Option<u64>,
    ) {
        let ack = ack.map(|id| Ack::new(conn.clone(), id));
        dispatch(self.st.clone(), Peer::new(conn.clone()), name, data, ack);
    }

    fn closed(&self, conn: &Arc<Conn<Arc<Session>>>, reason: &'static str) {
        self.st.peers.remove(conn.user().id);
        on_disconnect(&self.st, &Peer::new(conn.clone()), reason);
    }
}
