//! The record writer: one thread that commits stored files' records (and keys' last use) to the store in batches, so
//! uploads never queue on the store's write lock. The records only cache hashes for listings (checked against size
//! and mtime), so one lost in a crash costs a re-hash, never a file.

use crate::log::{Line, SERVE};
use crate::store::{FileRecord, Store};
use std::path::PathBuf;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::Mutex;
use std::time::Duration;

/// How long the writer waits for more records once one has come.
const LINGER: Duration = Duration::from_millis(20);
/// The most records committed in one transaction.
const BATCH: usize = 4096;

enum Message {
    File(FileRecord),
    /// An API key was used (written at most once a minute per key by the caller).
    KeyUsed(String),
    /// An admin token was used (likewise).
    AdminTokenUsed(String),
    /// Answered once the records sent before it are committed.
    Settle(SyncSender<()>),
}

pub struct Records {
    sender: Mutex<Option<Sender<Message>>>,
}

impl Records {
    /// Starts the writer thread on its own store connection.
    pub fn start(store_path: PathBuf) -> Records {
        let (sender, receiver) = channel::<Message>();
        std::thread::spawn(move || write_batches(&store_path, receiver));
        Records { sender: Mutex::new(Some(sender)) }
    }

    /// Queues a stored file's record. Should the writer be gone, the record is lost and the next listing hashes the
    /// file again.
    pub fn remember(&self, record: FileRecord) {
        if !self.send(Message::File(record)) {
            Line::of(SERVE).field("event", "store-error").field("error", "the record writer has stopped").to_stderr();
        }
    }

    /// Queues a key's last use.
    pub fn key_used(&self, id: &str) {
        self.send(Message::KeyUsed(id.to_owned()));
    }

    /// Queues an admin token's last use.
    pub fn admin_token_used(&self, id: &str) {
        self.send(Message::AdminTokenUsed(id.to_owned()));
    }

    /// Returns once every record queued before the call is in the store (or after two seconds at most).
    pub fn settle(&self) {
        let (ack, done) = sync_channel(1);
        if self.send(Message::Settle(ack)) {
            let _ = done.recv_timeout(Duration::from_secs(2));
        }
    }

    fn send(&self, message: Message) -> bool {
        let sent = self.sender.lock().ok().and_then(|sender| sender.as_ref().map(|s| s.send(message).is_ok()));
        sent == Some(true)
    }
}

/// Commits whatever has queued up, one transaction per batch.
fn write_batches(store_path: &std::path::Path, receiver: Receiver<Message>) {
    let Ok(store) = Store::open(store_path) else { return };
    while let Ok(first) = receiver.recv() {
        if !matches!(first, Message::Settle(_)) {
            // Let a busy stream of uploads gather: one transaction and one wake-up per batch, not per file.
            std::thread::sleep(LINGER);
        }
        let (mut files, mut keys, mut tokens, mut waiting) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for message in std::iter::once(first).chain(receiver.try_iter().take(BATCH - 1)) {
            match message {
                Message::File(record) => files.push(record),
                Message::KeyUsed(id) => keys.push(id),
                Message::AdminTokenUsed(id) => tokens.push(id),
                Message::Settle(ack) => waiting.push(ack),
            }
        }
        let written = store.in_transaction(|store| {
            for record in &files {
                store.record_file(record)?;
            }
            for id in &keys {
                store.touch_api_key(id)?;
            }
            for id in &tokens {
                store.touch_admin_token(id)?;
            }
            Ok(())
        });
        if let Err(error) = written {
            Line::of(SERVE).field("event", "store-error").field("error", error).to_stderr();
        }
        for ack in waiting {
            let _ = ack.send(());
        }
    }
}
