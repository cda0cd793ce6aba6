//! MQTT 3.1.1 packets over a byte stream, with rumqttd's codec: read buffered, write in bulk,
//! never past a size limit or a deadline.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use rumqttd::protocol::{self, Packet, Protocol, v4::V4};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::acl::PublishQos;

/// What went wrong on the wire.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    #[error("the peer closed the connection")]
    Closed,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("malformed MQTT: {0:?}")]
    Malformed(protocol::Error),
    #[error("no write progress within {0:?}: the peer does not read")]
    WriteStalled(Duration),
}

/// A stream carrying MQTT packets.
pub(crate) struct Wire<S> {
    stream: S,
    read: BytesMut,
    write: BytesMut,
    max_packet: usize,
    write_timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    pub(crate) fn new(stream: S, max_packet: usize, write_timeout: Duration) -> Self {
        Self {
            stream,
            read: BytesMut::with_capacity(4 * 1024),
            write: BytesMut::with_capacity(4 * 1024),
            max_packet,
            write_timeout,
        }
    }

    pub(crate) fn set_max_packet(&mut self, max_packet: usize) {
        self.max_packet = max_packet;
    }

    /// The next packet already in the buffer, with its PUBLISH QoS when it is one.
    pub(crate) fn next_buffered(
        &mut self,
    ) -> Result<Option<(Packet, Option<PublishQos>)>, WireError> {
        let Some(&first) = self.read.first() else {
            return Ok(None);
        };
        match V4.read_mut(&mut self.read, self.max_packet) {
            Ok(packet) => Ok(Some((packet, PublishQos::of_header(first)))),
            Err(protocol::Error::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(WireError::Malformed(e)),
        }
    }

    /// Reads more bytes into the buffer. Cancel-safe: when dropped before it completes, no
    /// byte has been taken from the stream.
    pub(crate) async fn fill(&mut self) -> Result<usize, WireError> {
        if self.read.capacity() - self.read.len() < 1024 {
            self.read.reserve(4 * 1024);
        }
        match self.stream.read_buf(&mut self.read).await? {
            0 => Err(WireError::Closed),
            n => Ok(n),
        }
    }

    /// Reads until one whole packet is there.
    pub(crate) async fn read_packet(&mut self) -> Result<(Packet, Option<PublishQos>), WireError> {
        loop {
            if let Some(packet) = self.next_buffered()? {
                return Ok(packet);
            }
            self.fill().await?;
        }
    }

    /// Queues `packet` for the next [`Self::flush`]. Properties (MQTT 5 only) are dropped: the
    /// v4 codec has no place for them.
    pub(crate) fn queue(&mut self, packet: Packet) -> Result<(), WireError> {
        V4.write(without_properties(packet), &mut self.write)
            .map(drop)
            .map_err(WireError::Malformed)
    }

    /// Writes everything queued, within the write timeout.
    pub(crate) async fn flush(&mut self) -> Result<(), WireError> {
        if self.write.is_empty() {
            return Ok(());
        }
        let write = async {
            self.stream.write_all(&self.write).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(self.write_timeout, write).await {
            Ok(result) => result?,
            Err(_) => return Err(WireError::WriteStalled(self.write_timeout)),
        }
        self.write.clear();
        Ok(())
    }

    /// Writes `packet` now.
    pub(crate) async fn send(&mut self, packet: Packet) -> Result<(), WireError> {
        self.queue(packet)?;
        self.flush().await
    }

    /// Ends the stream (TLS close_notify, TCP FIN), within the write timeout.
    pub(crate) async fn shutdown(mut self) {
        let _ = tokio::time::timeout(self.write_timeout, self.stream.shutdown()).await;
    }
}

/// rumqttd's v4 writer refuses (panics on) packets that carry MQTT 5 properties.
fn without_properties(packet: Packet) -> Packet {
    match packet {
        Packet::Publish(p, _) => Packet::Publish(p, None),
        Packet::PubAck(p, _) => Packet::PubAck(p, None),
        Packet::SubAck(p, _) => Packet::SubAck(p, None),
        Packet::UnsubAck(p, _) => Packet::UnsubAck(p, None),
        Packet::PubRec(p, _) => Packet::PubRec(p, None),
        Packet::PubRel(p, _) => Packet::PubRel(p, None),
        Packet::PubComp(p, _) => Packet::PubComp(p, None),
        Packet::Subscribe(p, _) => Packet::Subscribe(p, None),
        Packet::Unsubscribe(p, _) => Packet::Unsubscribe(p, None),
        Packet::Disconnect(p, _) => Packet::Disconnect(p, None),
        Packet::ConnAck(p, _) => Packet::ConnAck(p, None),
        Packet::Connect(c, _, will, _, login) => Packet::Connect(c, None, will, None, login),
        other => other,
    }
}
