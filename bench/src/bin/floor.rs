//! The floor: the least a thread-per-connection WebSocket fan-out of this design can cost,
//! to measure ours against (issue: "sit on the design's floor").
//!
//! A listener; a plain WebSocket handshake; one dedicated thread per client, blocked on a
//! bounded crossbeam receiver; one generator thread that encodes the sample (our
//! simulator's, so the bytes are the same size as ours) once per tick and frames it once;
//! each client thread writes the frame with one syscall. No guards, no metrics, no
//! reading of client frames. A request that is not an upgrade gets the latest sample, and
//! the connection is kept for the next one: REST's floor. It sizes the futex hash as ours
//! does (`platform::expect_threads`): that is the kernel's cost of many parked threads,
//! not ours to win over the floor. `--reader` adds a second thread per client blocked in
//! `read`, as tiny_http's pinned pool thread cost each stream before the edge.
//!
//! ```text
//! PORT=4100 floor [--reader]
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use realtime_analytics_backend::config::Config;
use realtime_analytics_backend::sample::{Fields, encode};

/// The same stack as our stream threads.
const STACK: usize = 128 * 1024;

type Frame = Arc<[u8]>;

fn main() {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(4100);
    let reader = std::env::args().any(|a| a == "--reader");
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
    // Off the accept loop, as ours does it once serving: it takes the kernel tens of ms.
    thread::spawn(|| realtime_analytics_backend::platform::expect_threads(20_000));
    let model = Config::default().model();
    let subscribers: Arc<Mutex<Vec<Sender<Frame>>>> = Arc::default();
    let latest = Arc::new(Mutex::new(frame(&model, tick_now(&model))));
    {
        let (subscribers, latest) = (Arc::clone(&subscribers), Arc::clone(&latest));
        thread::spawn(move || generate(&model, &subscribers, &latest));
    }
    for stream in listener.incoming().flatten() {
        let (subscribers, latest) = (Arc::clone(&subscribers), Arc::clone(&latest));
        let _ = thread::Builder::new()
            .stack_size(STACK)
            .spawn(move || serve(stream, &subscribers, &latest, reader));
    }
}

fn tick_now(model: &realtime_analytics_backend::simulator::Model) -> u64 {
    model.tick_at(now_ms())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Sample `tick`, encoded and framed once as an unmasked text frame.
fn frame(model: &realtime_analytics_backend::simulator::Model, tick: u64) -> Frame {
    let json = encode(
        &model.sample(tick, model.scenario, false),
        Fields::ORIGINAL,
        false,
    );
    text_frame(&json)
}

/// REST's floor: the latest sample for every request, on a kept-alive connection, read
/// and answered by the connection's own thread (what `wrk` measures against ours).
fn rest(mut head: BufReader<&TcpStream>, latest: &Mutex<Frame>) {
    let mut line = String::new();
    loop {
        let frame = Arc::clone(&latest.lock().unwrap());
        let json = &frame[if frame[1] < 126 { 2 } else { 4 }..];
        let mut reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            json.len()
        )
        .into_bytes();
        reply.extend_from_slice(json);
        let mut out = *head.get_ref();
        if out.write_all(&reply).is_err() {
            return;
        }
        // The next request's head, up to its blank line.
        loop {
            line.clear();
            match head.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(n) if n <= 2 => break,
                Ok(_) => {}
            }
        }
    }
}

fn text_frame(payload: &[u8]) -> Frame {
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.push(0x81);
    if payload.len() < 126 {
        out.push(payload.len() as u8);
    } else {
        out.push(126);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    out.extend_from_slice(payload);
    out.into()
}

/// On the clock's tick grid, like ours: encode once, offer to every subscriber.
fn generate(
    model: &realtime_analytics_backend::simulator::Model,
    subscribers: &Mutex<Vec<Sender<Frame>>>,
    latest: &Mutex<Frame>,
) {
    let interval = model.interval_ms();
    let mut last = tick_now(model);
    loop {
        let due = (last + 1) * interval;
        thread::sleep(Duration::from_millis(due.saturating_sub(now_ms())));
        last = tick_now(model).max(last + 1);
        let frame = frame(model, last);
        *latest.lock().unwrap() = Arc::clone(&frame);
        subscribers.lock().unwrap().retain(|tx| {
            !matches!(
                tx.try_send(Arc::clone(&frame)),
                Err(TrySendError::Disconnected(_))
            )
        });
    }
}

fn serve(
    stream: TcpStream,
    subscribers: &Mutex<Vec<Sender<Frame>>>,
    latest: &Mutex<Frame>,
    reader: bool,
) {
    let mut head = BufReader::new(&stream);
    let mut key = None;
    let mut line = String::new();
    while head.read_line(&mut line).is_ok_and(|n| n > 2) {
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("sec-websocket-key")
        {
            key = Some(value.trim().to_string());
        }
        line.clear();
    }
    let mut out = &stream;
    let Some(key) = key else {
        return rest(head, latest);
    };
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let (tx, rx): (Sender<Frame>, Receiver<Frame>) = bounded(2);
    let first = Arc::clone(&latest.lock().unwrap());
    let opened = write!(
        out,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .and_then(|()| out.write_all(&text_frame(br#"{"type":"welcome","interval_ms":1500}"#)))
    .and_then(|()| out.write_all(&first));
    if opened.is_err() {
        return;
    }
    subscribers.lock().unwrap().push(tx);
    if reader && let Ok(mut input) = stream.try_clone() {
        let _ = thread::Builder::new().stack_size(STACK).spawn(move || {
            let mut buf = [0u8; 512];
            while input.read(&mut buf).is_ok_and(|n| n > 0) {}
        });
    }
    for frame in rx {
        if out.write_all(&frame).is_err() {
            return;
        }
    }
}
