//! The local identity step (PROTOCOL.md §5): the gateway answers a device's CoAP-EAP
//! trigger (RFC 9820 §3.2 step 0) itself with the first request — a CoAP `POST` carrying
//! EAP-Request/Identity and the network's CoAP-EAP information (cipher suites, RID-C) —
//! and forwards the device's 2.01 together with that request as ONE `kind 3` entry.
//!
//! Nothing here is secret (R3): the EAP-Request/Identity carries no key and no freshness
//! the network relies on, and the offer is what the network sent the gateway in the clear
//! during its own CoAP-EAP run. Like `relay`, this module names no key type.
//!
//! Reliability on the capillary hop is the gateway's job for this one request: CON, with
//! RFC 7252 §4.2 timers (ACK_TIMEOUT × random factor, doubled each time, MAX_RETRANSMIT).
//! A device that repeats its trigger (same first resource) while its run is known is a
//! duplicate and is ignored (the request, or its retransmission, answers it); a trigger
//! naming another resource starts a new run. Answers to a request already forwarded (the
//! device answered a retransmission, or the datagram was duplicated) are dropped.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::time::{Duration, Instant};

use capillary_coap::reliability::{MessageIdAllocator, TokenAllocator, TransmissionParams};
use capillary_coap::{Message, MessageType};
use capillary_coap_eap::trigger::{parse_trigger, ResourcePath};
use capillary_coap_eap::{identity_request, CoapEapInfo};
use rand::rngs::StdRng;
use rand::Rng;

/// Token length of the local requests: the network's CoAP-EAP authenticator uses 4-byte
/// tokens, so a local request can never be confused with one of its requests.
const TOKEN_LEN: usize = 8;

#[derive(Debug)]
enum State {
    /// The request is out; waiting for the device's answer.
    Waiting { retransmits: u8, timeout: Duration },
    /// The answer went up in a `kind 3` entry; later copies of it are duplicates.
    Forwarded,
}

#[derive(Debug)]
struct Run {
    path: ResourcePath,
    request: Message,
    bytes: Vec<u8>,
    state: State,
    /// Key of this run's entry in [`LocalIdentity::timers`].
    timer: (Instant, u64),
}

/// What a device datagram turned out to be.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Not part of a local identity step: relay it as usual (`kind 0`).
    Relay,
    /// Handled here (a duplicate, or an answer that is now a `kind 3` entry).
    Consumed,
    /// A new run: send this request to the device.
    Request(Vec<u8>),
    /// A duplicate separate CON answer: send the device this Empty ACK again.
    Reply(Vec<u8>),
    /// The device answered: forward `{1: request, 2: response}` as `kind 3`; `ack` (an
    /// Empty ACK for a separate CON response) goes back to the device.
    Answered {
        request: Vec<u8>,
        response: Vec<u8>,
        ack: Option<Vec<u8>>,
    },
}

/// Local identity runs, per device address.
#[derive(Debug)]
pub(crate) struct LocalIdentity<A> {
    params: TransmissionParams,
    mids: MessageIdAllocator,
    tokens: TokenAllocator,
    runs: HashMap<A, Run>,
    timers: BTreeMap<(Instant, u64), A>,
    seq: u64,
}

impl<A: Hash + Eq + Clone> LocalIdentity<A> {
    pub(crate) fn new(params: TransmissionParams, rng: &mut StdRng) -> Self {
        LocalIdentity {
            params,
            mids: MessageIdAllocator::new(rng.gen()),
            tokens: TokenAllocator::new(TOKEN_LEN, rng.gen()),
            runs: HashMap::new(),
            timers: BTreeMap::new(),
            seq: 0,
        }
    }

    fn schedule(&mut self, addr: &A, at: Instant) -> (Instant, u64) {
        self.seq += 1;
        let key = (at, self.seq);
        self.timers.insert(key, addr.clone());
        key
    }

    /// A device datagram. `offer`: the network's CoAP-EAP information, when the gateway
    /// may answer triggers locally (switched on, authenticated, offer known); without it
    /// new triggers are relayed, but answers to runs already started are still handled.
    pub(crate) fn device_message(
        &mut self,
        now: Instant,
        from: &A,
        msg: &Message,
        offer: Option<&CoapEapInfo>,
        rng: &mut StdRng,
    ) -> Outcome {
        if let Some(path) = parse_trigger(msg) {
            if self.runs.get(from).is_some_and(|r| r.path == path) {
                return Outcome::Consumed;
            }
            let Some(offer) = offer else {
                self.forget(from);
                return Outcome::Relay;
            };
            return self.start(now, from, path, offer, rng);
        }
        if msg.code.is_request() {
            return Outcome::Relay;
        }
        let Some(run) = self.runs.get_mut(from) else {
            return Outcome::Relay;
        };
        let answers = match msg.ty {
            MessageType::Ack => {
                msg.message_id == run.request.message_id && msg.token == run.request.token
            }
            MessageType::Con | MessageType::Non => {
                !msg.code.is_empty() && msg.token == run.request.token
            }
            MessageType::Rst => msg.message_id == run.request.message_id,
        };
        if !answers {
            return Outcome::Relay;
        }
        let ack = (msg.ty == MessageType::Con)
            .then(|| Message::empty_ack(msg.message_id).encode().ok())
            .flatten();
        if msg.code.is_empty() {
            // Empty ACK (a separate response follows) or RST (the device refuses): stop
            // retransmitting; the run ends on its exchange lifetime.
            if matches!(run.state, State::Waiting { .. }) {
                let at = now
                    .checked_add(self.params.exchange_lifetime())
                    .unwrap_or(now);
                let old = run.timer;
                if msg.ty == MessageType::Rst {
                    run.state = State::Forwarded;
                }
                self.timers.remove(&old);
                let t = self.schedule(from, at);
                if let Some(run) = self.runs.get_mut(from) {
                    run.timer = t;
                }
            }
            return Outcome::Consumed;
        }
        if matches!(run.state, State::Forwarded) {
            return match ack {
                Some(a) => Outcome::Reply(a),
                None => Outcome::Consumed,
            };
        }
        let request = run.bytes.clone();
        // Still waiting until the gateway queued the entry (Self::forwarded): if it could
        // not (back-pressure), the retransmitted request makes the device answer again.
        match msg.encode() {
            Ok(response) => Outcome::Answered {
                request,
                response,
                ack,
            },
            Err(_) => Outcome::Consumed,
        }
    }

    /// The answer of `addr`'s run is queued as a `kind 3` entry: stop retransmitting, and
    /// keep the run for an exchange lifetime to absorb duplicates of the answer.
    pub(crate) fn forwarded(&mut self, now: Instant, addr: &A) {
        let Some(run) = self.runs.get_mut(addr) else {
            return;
        };
        run.state = State::Forwarded;
        let old = run.timer;
        self.timers.remove(&old);
        let at = now
            .checked_add(self.params.exchange_lifetime())
            .unwrap_or(now);
        let t = self.schedule(addr, at);
        if let Some(run) = self.runs.get_mut(addr) {
            run.timer = t;
        }
    }

    fn start(
        &mut self,
        now: Instant,
        from: &A,
        path: ResourcePath,
        offer: &CoapEapInfo,
        rng: &mut StdRng,
    ) -> Outcome {
        self.forget(from);
        let request = identity_request(
            self.mids.next_id(),
            self.tokens.next_token(),
            true,
            &path,
            rng.gen(),
            offer,
        );
        let Ok(bytes) = request.encode() else {
            return Outcome::Relay;
        };
        let timeout = self.params.initial_timeout(rng.gen());
        let at = now.checked_add(timeout).unwrap_or(now);
        let timer = self.schedule(from, at);
        self.runs.insert(
            from.clone(),
            Run {
                path,
                request,
                bytes: bytes.clone(),
                state: State::Waiting {
                    retransmits: 0,
                    timeout,
                },
                timer,
            },
        );
        Outcome::Request(bytes)
    }

    /// Forget the run of `addr` (its handle was released, or a relayed trigger replaced it).
    pub(crate) fn forget(&mut self, addr: &A) {
        if let Some(r) = self.runs.remove(addr) {
            self.timers.remove(&r.timer);
        }
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.timers.keys().next().map(|k| k.0)
    }

    /// Retransmissions due at `now` (`(device, bytes)`), and runs whose time is up dropped
    /// (the device did not answer after MAX_RETRANSMIT, or the duplicate window ended).
    pub(crate) fn handle_timeout(&mut self, now: Instant) -> Vec<(A, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let addr = entry.remove();
            let Some(run) = self.runs.get_mut(&addr) else {
                continue;
            };
            match &mut run.state {
                State::Waiting {
                    retransmits,
                    timeout,
                } if *retransmits < self.params.max_retransmit => {
                    *retransmits += 1;
                    *timeout = timeout.saturating_mul(2);
                    let at = now.checked_add(*timeout).unwrap_or(now);
                    out.push((addr.clone(), run.bytes.clone()));
                    self.seq += 1;
                    let key = (at, self.seq);
                    run.timer = key;
                    self.timers.insert(key, addr);
                }
                _ => {
                    self.runs.remove(&addr);
                }
            }
        }
        out
    }
}
