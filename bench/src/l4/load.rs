//! The L4 bench's load generator and pod servers: threads of this process, each inside its
//! namespace (sockets belong to the namespace they were created in) and pinned to the load
//! CPU(s). The same load for every system:
//!
//! - **bulk** (the per-packet path): `streams` TCP connections from the client to the bulk
//!   service, each writing 256 KiB buffers as fast as it can; the pod's sink reads and counts.
//!   Many full-size packets per flow.
//! - **connection rate** (the per-flow path): one epoll loop keeping `concurrency` connections
//!   in flight; each connects, sends a 64-byte request, reads the 128-byte answer until the pod
//!   closes, closes, and starts over. The pod closes first, so TIME_WAIT stays on the pods and
//!   client ports are reused at once. A handful of packets per flow, every one of them in a
//!   new or closing flow.
//! - **udp** (the per-packet path without GRO): `UDP_FLOWS` UDP sockets sending 64-byte
//!   datagrams with `sendmmsg` as fast as they can; the pod's sink counts what it receives.
//!   Each datagram is a packet on its own all the way: nothing merges them.
use super::topology::{POD_BULK_PORT, POD_RR_PORT, POD_UDP_PORT};
use anyhow::{bail, ensure, Context, Result};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tether_testkit::cpu::pin_thread;
use tether_testkit::netns::{enter, Netns};

pub const REQUEST_LEN: usize = 64;
pub const RESPONSE_LEN: usize = 128;
const BULK_BUFFER: usize = 256 * 1024;
/// UDP load: sockets (flows), datagram payload, datagrams per `sendmmsg`/`recvmmsg`.
pub const UDP_FLOWS: usize = 8;
pub const DATAGRAM_LEN: usize = 64;
const DATAGRAM_BATCH: usize = 32;
/// A connection-rate connection older than this is abandoned (and counted as an error).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(100);

fn response(pod: usize) -> Vec<u8> {
    let mut text = format!("pod-{pod}\n").into_bytes();
    text.resize(RESPONSE_LEN, b' ');
    text
}

// ---------------------------------------------------------------------------------------------
// Pod servers

pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    bulk_bytes: Vec<Arc<AtomicU64>>,
    served: Vec<Arc<AtomicU64>>,
    datagrams: Vec<Arc<AtomicU64>>,
}

impl Servers {
    /// A bulk sink (`POD_BULK_PORT`) and a request/answer server (`POD_RR_PORT`) in each pod.
    pub fn start(pods: &[Netns], cpus: &[usize]) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut servers = Self {
            stop: stop.clone(),
            threads: Vec::new(),
            bulk_bytes: Vec::new(),
            served: Vec::new(),
            datagrams: Vec::new(),
        };
        for (index, pod) in pods.iter().enumerate() {
            let bulk = pod.run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, POD_BULK_PORT)))??;
            let rr = pod.run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, POD_RR_PORT)))??;
            let udp = pod.run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, POD_UDP_PORT)))??;
            udp.set_read_timeout(Some(POLL))?;
            let datagrams = Arc::new(AtomicU64::new(0));
            servers.datagrams.push(datagrams.clone());
            let (stop_udp, cpus_udp) = (stop.clone(), cpus.to_vec());
            servers.threads.push(std::thread::spawn(move || {
                let _ = pin_thread(&cpus_udp);
                udp_sink(&udp, &datagrams, &stop_udp);
            }));
            bulk.set_nonblocking(true)?;
            rr.set_nonblocking(true)?;
            let bytes = Arc::new(AtomicU64::new(0));
            let served = Arc::new(AtomicU64::new(0));
            servers.bulk_bytes.push(bytes.clone());
            servers.served.push(served.clone());
            let (stop_bulk, stop_rr) = (stop.clone(), stop.clone());
            let cpus_bulk = cpus.to_vec();
            let cpus_rr = cpus.to_vec();
            servers.threads.push(std::thread::spawn(move || {
                let _ = pin_thread(&cpus_bulk);
                bulk_sink(bulk, &bytes, &stop_bulk, &cpus_bulk);
            }));
            servers.threads.push(std::thread::spawn(move || {
                let _ = pin_thread(&cpus_rr);
                if let Err(error) = rr_server(&rr, index, &served, &stop_rr) {
                    eprintln!("pod-{index} server: {error:#}");
                }
            }));
        }
        Ok(servers)
    }

    pub fn bulk_bytes(&self) -> u64 {
        self.bulk_bytes
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }

    /// Datagrams the pods' UDP sinks received, summed.
    pub fn datagrams(&self) -> u64 {
        self.datagrams
            .iter()
            .map(|d| d.load(Ordering::Relaxed))
            .sum()
    }

    /// Connections answered, per pod.
    pub fn served(&self) -> Vec<u64> {
        self.served
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .collect()
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn bulk_sink(
    listener: TcpListener,
    bytes: &Arc<AtomicU64>,
    stop: &Arc<AtomicBool>,
    cpus: &[usize],
) {
    let mut readers = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let (bytes, stop, cpus) = (bytes.clone(), stop.clone(), cpus.to_vec());
                readers.push(std::thread::spawn(move || {
                    let _ = pin_thread(&cpus);
                    drain(stream, &bytes, &stop);
                }));
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    for reader in readers {
        let _ = reader.join();
    }
}

fn drain(mut stream: TcpStream, bytes: &AtomicU64, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(POLL));
    let mut buffer = vec![0u8; BULK_BUFFER];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buffer) {
            Ok(0) => return,
            Ok(n) => {
                bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Buffers and headers for `sendmmsg`/`recvmmsg` of [`DATAGRAM_BATCH`] datagrams.
struct Batch {
    buffers: Vec<[u8; DATAGRAM_LEN]>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

impl Batch {
    fn new() -> Box<Self> {
        let mut batch = Box::new(Self {
            buffers: vec![[0x75; DATAGRAM_LEN]; DATAGRAM_BATCH],
            iovecs: Vec::with_capacity(DATAGRAM_BATCH),
            headers: Vec::with_capacity(DATAGRAM_BATCH),
        });
        // The iovecs point into `buffers` and the headers into `iovecs`: both vectors keep their
        // heap storage for the batch's life.
        for i in 0..DATAGRAM_BATCH {
            let base = batch.buffers[i].as_mut_ptr().cast();
            batch.iovecs.push(libc::iovec {
                iov_base: base,
                iov_len: DATAGRAM_LEN,
            });
        }
        for i in 0..DATAGRAM_BATCH {
            // SAFETY: mmsghdr is plain data; zeroed is valid (no address, no control).
            let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
            header.msg_hdr.msg_iov = &mut batch.iovecs[i];
            header.msg_hdr.msg_iovlen = 1;
            batch.headers.push(header);
        }
        batch
    }
}

fn udp_sink(socket: &UdpSocket, datagrams: &AtomicU64, stop: &AtomicBool) {
    let mut batch = Batch::new();
    let mut timeout = libc::timespec {
        tv_sec: 0,
        tv_nsec: 100_000_000,
    };
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: the headers point at live buffers of the batch; the socket is open.
        let received = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                batch.headers.as_mut_ptr(),
                DATAGRAM_BATCH as u32,
                libc::MSG_WAITFORONE,
                &mut timeout,
            )
        };
        if received > 0 {
            datagrams.fetch_add(received as u64, Ordering::Relaxed);
        }
    }
}

/// The UDP load: [`UDP_FLOWS`] connected sockets, each sending batches of datagrams in turn.
pub fn udp(client: &Netns, target: SocketAddrV4, cpus: &[usize]) -> Load {
    Load::in_client(client, cpus, move |stop, progress| {
        let sockets: Vec<UdpSocket> = (0..UDP_FLOWS)
            .filter_map(|_| {
                let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
                socket.connect(target).ok()?;
                Some(socket)
            })
            .collect();
        if sockets.len() != UDP_FLOWS {
            progress.errors.fetch_add(1, Ordering::Relaxed);
            return Vec::new();
        }
        let mut batch = Batch::new();
        while !stop.load(Ordering::Relaxed) {
            for socket in &sockets {
                // SAFETY: the headers point at live buffers; connected sockets need no address.
                let sent = unsafe {
                    libc::sendmmsg(
                        socket.as_raw_fd(),
                        batch.headers.as_mut_ptr(),
                        DATAGRAM_BATCH as u32,
                        0,
                    )
                };
                if sent > 0 {
                    progress.done.fetch_add(sent as u64, Ordering::Relaxed);
                } else {
                    // A full ring or an unreachable answer: counted, and the load goes on.
                    progress.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Vec::new()
    })
}

/// Minimal epoll wrapper: the fd, closed on drop.
struct Epoll(i32);

impl Epoll {
    fn new() -> Result<Self> {
        // SAFETY: plain syscall.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            bail!("epoll_create1: {}", std::io::Error::last_os_error());
        }
        Ok(Self(fd))
    }

    fn ctl(&self, op: i32, fd: i32, events: u32, data: u64) -> std::io::Result<()> {
        let mut event = libc::epoll_event { events, u64: data };
        // SAFETY: a live epoll fd and a valid event.
        if unsafe { libc::epoll_ctl(self.0, op, fd, &mut event) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn wait(&self, events: &mut [libc::epoll_event], timeout: Duration) -> usize {
        // SAFETY: the buffer holds `events.len()` entries.
        let n = unsafe {
            libc::epoll_wait(
                self.0,
                events.as_mut_ptr(),
                events.len() as i32,
                timeout.as_millis() as i32,
            )
        };
        usize::try_from(n).unwrap_or(0)
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: our own fd.
        unsafe { libc::close(self.0) };
    }
}

fn close(fd: i32) {
    // SAFETY: an fd this module opened and closes once.
    unsafe { libc::close(fd) };
}

/// Reads what is there: Ok(Some(n)) bytes, Ok(None) at EOF, Err(WouldBlock) when drained.
fn read_some(fd: i32, buffer: &mut [u8]) -> std::io::Result<Option<usize>> {
    // SAFETY: the buffer is valid for its length.
    let n = unsafe { libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len()) };
    match n {
        0 => Ok(None),
        n if n > 0 => Ok(Some(n as usize)),
        _ => Err(std::io::Error::last_os_error()),
    }
}

fn write_all_now(fd: i32, data: &[u8]) -> bool {
    // SAFETY: the buffer is valid for its length.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    usize::try_from(n).is_ok_and(|n| n == data.len())
}

const LISTENER: u64 = u64::MAX;

/// Accepts, reads the 64-byte request, answers 128 bytes, closes (first).
fn rr_server(
    listener: &TcpListener,
    pod: usize,
    served: &AtomicU64,
    stop: &AtomicBool,
) -> Result<()> {
    let epoll = Epoll::new()?;
    let lfd = listener.as_raw_fd();
    epoll.ctl(libc::EPOLL_CTL_ADD, lfd, libc::EPOLLIN as u32, LISTENER)?;
    let answer = response(pod);
    let mut pending: HashMap<i32, usize> = HashMap::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut buffer = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let n = epoll.wait(&mut events, POLL);
        for event in &events[..n] {
            let data = event.u64;
            if data == LISTENER {
                loop {
                    // SAFETY: accept4 on our listening socket, no address wanted.
                    let fd = unsafe {
                        libc::accept4(
                            lfd,
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        )
                    };
                    if fd < 0 {
                        break;
                    }
                    if epoll
                        .ctl(libc::EPOLL_CTL_ADD, fd, libc::EPOLLIN as u32, fd as u64)
                        .is_err()
                    {
                        close(fd);
                        continue;
                    }
                    pending.insert(fd, 0);
                }
                continue;
            }
            let fd = data as i32;
            loop {
                match read_some(fd, &mut buffer) {
                    Ok(Some(n)) => {
                        let got = pending.entry(fd).or_insert(0);
                        *got += n;
                        if *got >= REQUEST_LEN {
                            if write_all_now(fd, &answer) {
                                served.fetch_add(1, Ordering::Relaxed);
                            }
                            pending.remove(&fd);
                            close(fd);
                            break;
                        }
                    }
                    Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                    Err(error) if error.kind() == ErrorKind::Interrupted => {}
                    Ok(None) | Err(_) => {
                        pending.remove(&fd);
                        close(fd);
                        break;
                    }
                }
            }
        }
    }
    for fd in pending.into_keys() {
        close(fd);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Client load

/// What a load reports while it runs.
#[derive(Default)]
pub struct Progress {
    /// Bulk: bytes written; connection rate: connections completed (answer + close).
    pub done: AtomicU64,
    pub errors: AtomicU64,
    /// Connection rate: the errors by kind (connect, read, short, timeout).
    pub error_kinds: [AtomicU64; 4],
    /// Connection rate: record latencies while set.
    pub recording: AtomicBool,
}

/// Names of [`Progress::error_kinds`].
pub const ERROR_KINDS: [&str; 4] = [
    "connect failed (refused, reset or unreachable)",
    "reset or error while reading the answer",
    "answer cut short",
    "no answer within 5 s",
];

pub struct Load {
    stop: Arc<AtomicBool>,
    pub progress: Arc<Progress>,
    threads: Vec<JoinHandle<Vec<u32>>>,
}

impl Load {
    /// Runs `load` on one thread inside the client's namespace, pinned to `cpus`; what it
    /// returns (latencies, µs) comes back from [`Load::finish`].
    fn in_client(
        client: &Netns,
        cpus: &[usize],
        load: impl FnOnce(&AtomicBool, &Progress) -> Vec<u32> + Send + 'static,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(Progress::default());
        let (stop2, progress2, cpus, path) =
            (stop.clone(), progress.clone(), cpus.to_vec(), client.path());
        let thread = std::thread::spawn(move || {
            if enter(&path).is_err() {
                progress2.errors.fetch_add(1, Ordering::Relaxed);
                return Vec::new();
            }
            let _ = pin_thread(&cpus);
            load(&stop2, &progress2)
        });
        Self {
            stop,
            progress,
            threads: vec![thread],
        }
    }

    /// Stops the load and returns the latencies recorded (µs, connection rate only).
    pub fn finish(mut self) -> Vec<u32> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .drain(..)
            .filter_map(|t| t.join().ok())
            .flatten()
            .collect()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// `streams` bulk writers from the client namespace to `target`.
pub fn bulk(client: &Netns, target: SocketAddrV4, streams: usize, cpus: &[usize]) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(Progress::default());
    let threads = (0..streams)
        .map(|_| {
            let (stop, progress, cpus, path) =
                (stop.clone(), progress.clone(), cpus.to_vec(), client.path());
            std::thread::spawn(move || {
                writer(&path, target, &cpus, &stop, &progress);
                Vec::new()
            })
        })
        .collect();
    Load {
        stop,
        progress,
        threads,
    }
}

fn writer(ns: &Path, target: SocketAddrV4, cpus: &[usize], stop: &AtomicBool, progress: &Progress) {
    if enter(ns).is_err() {
        progress.errors.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let _ = pin_thread(cpus);
    let buffer = vec![0x5au8; BULK_BUFFER];
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut stream) =
            TcpStream::connect_timeout(&SocketAddr::V4(target), Duration::from_secs(3))
        else {
            progress.errors.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(POLL);
            continue;
        };
        let _ = stream.set_write_timeout(Some(POLL));
        while !stop.load(Ordering::Relaxed) {
            match stream.write(&buffer) {
                Ok(n) => {
                    progress.done.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(error)
                    if matches!(
                        error.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(_) => {
                    progress.errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
}

/// The connection-rate load: one epoll loop keeping `concurrency` connections in flight.
pub fn connection_rate(
    client: &Netns,
    target: SocketAddrV4,
    concurrency: usize,
    cpus: &[usize],
) -> Load {
    Load::in_client(client, cpus, move |stop, progress| {
        match rate_loop(target, concurrency, stop, progress) {
            Ok(latencies) => latencies,
            Err(error) => {
                eprintln!("connection-rate load: {error:#}");
                progress.errors.fetch_add(1, Ordering::Relaxed);
                Vec::new()
            }
        }
    })
}

struct Slot {
    fd: i32,
    connected: bool,
    got: usize,
    started: Instant,
}

fn sockaddr(target: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: target.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(target.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

/// A non-blocking connect registered for writability; -1 when the socket cannot even start.
fn open(epoll: &Epoll, address: &libc::sockaddr_in, slot: usize) -> i32 {
    // SAFETY: plain syscalls on a socket we own; the address outlives the call.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        if fd < 0 {
            return -1;
        }
        let result = libc::connect(
            fd,
            (address as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        if result != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINPROGRESS)
        {
            libc::close(fd);
            return -1;
        }
        if epoll
            .ctl(libc::EPOLL_CTL_ADD, fd, libc::EPOLLOUT as u32, slot as u64)
            .is_err()
        {
            libc::close(fd);
            return -1;
        }
        fd
    }
}

fn socket_error(fd: i32) -> i32 {
    let mut error: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into a c_int of the size passed.
    let result = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut error as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if result != 0 {
        -1
    } else {
        error
    }
}

fn rate_loop(
    target: SocketAddrV4,
    concurrency: usize,
    stop: &AtomicBool,
    progress: &Progress,
) -> Result<Vec<u32>> {
    let epoll = Epoll::new()?;
    let address = sockaddr(target);
    let request = [b'q'; REQUEST_LEN];
    let mut slots: Vec<Slot> = (0..concurrency)
        .map(|i| Slot {
            fd: open(&epoll, &address, i),
            connected: false,
            got: 0,
            started: Instant::now(),
        })
        .collect();
    let mut latencies = Vec::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; concurrency.max(1)];
    let mut buffer = [0u8; 4096];
    let mut last_sweep = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let n = epoll.wait(&mut events, POLL);
        for event in &events[..n] {
            let index = event.u64 as usize;
            let Some(slot) = slots.get_mut(index) else {
                continue;
            };
            if slot.fd < 0 {
                continue;
            }
            // None: still going; Some(Ok): done; Some(Err(kind)): failed.
            let mut outcome: Option<Result<(), usize>> = None;
            if !slot.connected {
                let started = socket_error(slot.fd) == 0
                    && write_all_now(slot.fd, &request)
                    && epoll
                        .ctl(
                            libc::EPOLL_CTL_MOD,
                            slot.fd,
                            libc::EPOLLIN as u32,
                            index as u64,
                        )
                        .is_ok();
                if started {
                    slot.connected = true;
                } else {
                    outcome = Some(Err(0));
                }
            } else {
                loop {
                    match read_some(slot.fd, &mut buffer) {
                        Ok(Some(n)) => slot.got += n,
                        Ok(None) => {
                            outcome = Some(if slot.got == RESPONSE_LEN {
                                Ok(())
                            } else {
                                Err(2)
                            });
                            break;
                        }
                        Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                        Err(error) if error.kind() == ErrorKind::Interrupted => {}
                        Err(_) => {
                            outcome = Some(Err(1));
                            break;
                        }
                    }
                }
            }
            if let Some(result) = outcome {
                close(slot.fd);
                match result {
                    Ok(()) => {
                        progress.done.fetch_add(1, Ordering::Relaxed);
                        if progress.recording.load(Ordering::Relaxed) {
                            let us = slot.started.elapsed().as_micros();
                            latencies.push(u32::try_from(us).unwrap_or(u32::MAX));
                        }
                    }
                    Err(kind) => {
                        progress.errors.fetch_add(1, Ordering::Relaxed);
                        progress.error_kinds[kind].fetch_add(1, Ordering::Relaxed);
                    }
                }
                *slot = Slot {
                    fd: open(&epoll, &address, index),
                    connected: false,
                    got: 0,
                    started: Instant::now(),
                };
            }
        }
        // Abandon stuck connections; retry sockets that could not start.
        if last_sweep.elapsed() >= POLL {
            last_sweep = Instant::now();
            for (index, slot) in slots.iter_mut().enumerate() {
                if slot.fd >= 0 && slot.started.elapsed() < CONNECTION_TIMEOUT {
                    continue;
                }
                if slot.fd >= 0 {
                    close(slot.fd);
                    progress.error_kinds[3].fetch_add(1, Ordering::Relaxed);
                } else {
                    progress.error_kinds[0].fetch_add(1, Ordering::Relaxed);
                }
                progress.errors.fetch_add(1, Ordering::Relaxed);
                *slot = Slot {
                    fd: open(&epoll, &address, index),
                    connected: false,
                    got: 0,
                    started: Instant::now(),
                };
            }
        }
    }
    for slot in &slots {
        if slot.fd >= 0 {
            close(slot.fd);
        }
    }
    Ok(latencies)
}

// ---------------------------------------------------------------------------------------------
// Probes, before measuring

/// `count` request/answer connections to `target`; the pod that answered each.
pub fn probe_rr(client: &Netns, target: SocketAddrV4, count: usize) -> Result<Vec<usize>> {
    client.run(|| -> Result<Vec<usize>> {
        let mut pods = Vec::new();
        for _ in 0..count {
            let mut stream =
                TcpStream::connect_timeout(&SocketAddr::V4(target), Duration::from_secs(3))
                    .with_context(|| format!("connect to {target}"))?;
            stream.set_read_timeout(Some(Duration::from_secs(3)))?;
            stream.write_all(&[b'q'; REQUEST_LEN])?;
            let mut answer = Vec::new();
            stream
                .read_to_end(&mut answer)
                .with_context(|| format!("read the answer from {target}"))?;
            ensure!(
                answer.len() == RESPONSE_LEN,
                "{target} answered {} bytes, expected {RESPONSE_LEN}",
                answer.len()
            );
            let text = String::from_utf8_lossy(&answer);
            let pod = text
                .split_whitespace()
                .next()
                .and_then(|w| w.strip_prefix("pod-"))
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("an answer without a pod name: {text:?}"))?;
            pods.push(pod);
        }
        Ok(pods)
    })?
}

/// Writes `bytes` to the bulk `target` and waits until the pods' sinks counted them.
pub fn probe_bulk(
    client: &Netns,
    servers: &Servers,
    target: SocketAddrV4,
    bytes: usize,
) -> Result<()> {
    let before = servers.bulk_bytes();
    client.run(|| -> Result<()> {
        let mut stream =
            TcpStream::connect_timeout(&SocketAddr::V4(target), Duration::from_secs(3))
                .with_context(|| format!("connect to {target}"))?;
        stream.set_write_timeout(Some(Duration::from_secs(3)))?;
        stream.write_all(&vec![0x5a; bytes])?;
        Ok(())
    })??;
    let deadline = Instant::now() + Duration::from_secs(5);
    while servers.bulk_bytes() < before + bytes as u64 {
        ensure!(
            Instant::now() < deadline,
            "the bulk sink got {} of {bytes} bytes sent to {target}",
            servers.bulk_bytes() - before
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Sends `count` datagrams to `target` and waits for the pods' sinks to have them all.
pub fn probe_udp(
    client: &Netns,
    servers: &Servers,
    target: SocketAddrV4,
    count: u64,
) -> Result<()> {
    let before = servers.datagrams();
    client.run(|| -> Result<()> {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        socket.connect(target)?;
        for _ in 0..count {
            socket.send(&[0x75; DATAGRAM_LEN])?;
            // Paced: the probe checks the path, not the rings.
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    })??;
    let deadline = Instant::now() + Duration::from_secs(5);
    while servers.datagrams() < before + count {
        ensure!(
            Instant::now() < deadline,
            "the UDP sinks got {} of {count} datagrams sent to {target}",
            servers.datagrams() - before
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_name_their_pod_and_have_a_fixed_size() {
        let answer = response(2);
        assert_eq!(answer.len(), RESPONSE_LEN);
        assert!(answer.starts_with(b"pod-2\n"));
    }
}
