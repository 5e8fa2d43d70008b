//! Logging: lines formatted by the thread that logs, written to stderr by simplelog on a
//! thread of its own.
//!
//! A stream's thread runs at a low priority (`platform::lower_priority`) and logs its
//! client's connect and disconnect. Had it written the line itself, under the logger's
//! lock, a starved host would preempt it there, and every thread that logs, the accept
//! loop and the request threads among them, would wait for it. Here a log call takes no
//! lock: it formats its message and offers it to a bounded queue. The `log` thread, at
//! normal priority, hands each message to simplelog, which adds the time and level and
//! writes the line. When clients cause lines faster than stderr takes them, the queue's
//! bound drops the rest, and the next line written says how many were dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;
use std::{fmt, io};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use log::{Level, LevelFilter, Log, Metadata, Record};
use simplelog::{ConfigBuilder, WriteLogger};

/// Messages waiting for stderr: about 200 KiB at most.
const QUEUE: usize = 1024;
/// How long [`Log::flush`] waits for the messages before it to be written.
const FLUSH_WAIT: Duration = Duration::from_secs(1);

/// Installs the logger at `level`. Lines carry the time and level; tiny_http's one line
/// (its accept loop ending, which the edge causes) is left out.
pub fn init(level: LevelFilter) -> io::Result<()> {
    let config = ConfigBuilder::new()
        .set_time_format_custom(simplelog::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        ))
        .set_target_level(LevelFilter::Off)
        .set_thread_level(LevelFilter::Off)
        .build();
    let writer = WriteLogger::new(level, config, io::stderr());
    let (queue, messages) = bounded(QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&dropped);
    thread::Builder::new()
        .name("log".into())
        .spawn(move || write(&messages, &*writer, &counted))?;
    let logger = Queue {
        level,
        queue,
        dropped,
    };
    log::set_boxed_logger(Box::new(logger)).map_err(io::Error::other)?;
    log::set_max_level(level);
    Ok(())
}

/// What the `log` thread is given.
enum Entry {
    Message(Level, String),
    /// Answered once every message before it is written.
    Flush(Sender<()>),
}

/// The logger every thread calls.
struct Queue {
    level: LevelFilter,
    queue: Sender<Entry>,
    dropped: Arc<AtomicU64>,
}

impl Log for Queue {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level && !metadata.target().starts_with("tiny_http")
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let message = Entry::Message(record.level(), record.args().to_string());
        if let Err(TrySendError::Full(_)) = self.queue.try_send(message) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn flush(&self) {
        let (done, written) = bounded(1);
        if self
            .queue
            .send_timeout(Entry::Flush(done), FLUSH_WAIT)
            .is_ok()
        {
            let _ = written.recv_timeout(FLUSH_WAIT);
        }
    }
}

/// The `log` thread: has `writer` write each message, after a warning that counts the
/// messages dropped since the last one written.
fn write(messages: &Receiver<Entry>, writer: &dyn Log, dropped: &AtomicU64) {
    for entry in messages {
        match entry {
            Entry::Message(level, message) => {
                let missed = dropped.swap(0, Ordering::Relaxed);
                if missed > 0 {
                    line(
                        writer,
                        Level::Warn,
                        format_args!(
                            "{missed} log lines dropped: they came faster than stderr took them"
                        ),
                    );
                }
                line(writer, level, format_args!("{message}"));
            }
            Entry::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

fn line(writer: &dyn Log, level: Level, args: fmt::Arguments<'_>) {
    writer.log(&Record::builder().level(level).args(args).build());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_queued_without_waiting_and_counted_when_the_queue_is_full() {
        let (queue, messages) = bounded(1);
        let logger = Queue {
            level: LevelFilter::Info,
            queue,
            dropped: Arc::new(AtomicU64::new(0)),
        };
        let record = |level, target| {
            logger.log(
                &Record::builder()
                    .level(level)
                    .target(target)
                    .args(format_args!("{level} from {target}"))
                    .build(),
            )
        };
        record(Level::Debug, "server");
        record(Level::Info, "tiny_http");
        assert!(messages.is_empty(), "below the level or tiny_http's");
        record(Level::Info, "server");
        record(Level::Warn, "server");
        match messages.try_recv() {
            Ok(Entry::Message(Level::Info, message)) => assert_eq!(message, "INFO from server"),
            _ => panic!("the first message is queued"),
        }
        assert!(messages.is_empty());
        assert_eq!(
            logger.dropped.load(Ordering::Relaxed),
            1,
            "the second is counted"
        );
    }
}
