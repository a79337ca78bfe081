//! The gateway's OWN authentication (PROTOCOL.md §3.1): CoAP-EAP (RFC 9820) as an EAP peer,
//! carrying EAP-AKA' (RFC 9048) answered by the gateway's own USIM, ending in the OSCORE
//! context of the gateway link (RFC 9820 §6.2, RFC 8613 §3.2).
//!
//! This is the only module of the crate that handles key types (the gateway's own MSK,
//! through `EapAkaPeer::keys_in_progress`, and the OSCORE material derived from it). It
//! hands out a ready [`SecurityContext`] and nothing else; device traffic never comes here.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use capillary_aka::vector::Usim;
use capillary_coap::Message;
use capillary_coap_eap::trigger::is_trigger;
use capillary_coap_eap::{CoapEapInfo, CoapEapPeer, OscoreMaterial, PeerConfig, PeerEvent};
use capillary_eap::peer::{EapAkaPeer, PeerConfig as AkaPeerConfig, PeerEvent as AkaPeerEvent};
use capillary_oscore::{ContextParams, SecurityContext};
use capillary_secrets::Secret;
use rand::rngs::StdRng;

use crate::config::{GatewayConfig, GatewayOptions};
use crate::types::AuthFailure;

/// What the own authentication asks the gateway to do.
#[derive(Debug)]
pub(crate) enum AuthOutput {
    /// Send this unprotected CoAP message on the link.
    Transmit(Message),
    /// OSCORE-protect this response with the context that verified its request.
    TransmitProtected(Message),
    /// The OSCORE context of the authentication in progress (RFC 9820 §6.2): use it to
    /// verify the protected EAP-Success; it becomes the link context on `Authenticated`.
    NewContext(SecurityContext),
    /// EAP-Success arrived under the new context and was confirmed (RFC 9820 §3.3).
    Authenticated(Duration),
    /// The session lifetime ended without a successful re-authentication.
    SessionExpired,
    /// This attempt failed.
    Failed(AuthFailure),
}

/// CoAP-EAP peer + EAP-AKA' peer + USIM of the gateway itself.
pub(crate) struct OwnAuth {
    coap_eap: CoapEapPeer,
    aka: EapAkaPeer,
    usim: Usim,
    rng: StdRng,
    msk_given: bool,
    running: bool,
    /// The network's offer (cipher suites, RID-C) of the last successful run: no secret.
    offer: Option<CoapEapInfo>,
    out: VecDeque<AuthOutput>,
}

impl fmt::Debug for OwnAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnAuth")
            .field("coap_eap", &self.coap_eap)
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}

impl OwnAuth {
    pub(crate) fn new(
        cfg: &GatewayConfig,
        opts: &GatewayOptions,
        resource_seed: u32,
        initial_message_id: u16,
        rng: StdRng,
    ) -> Self {
        let mut pcfg = PeerConfig::new(cfg.rid_i.clone(), resource_seed, initial_message_id);
        pcfg.trigger_interval = opts.trigger_interval;
        pcfg.max_triggers = opts.max_triggers;
        pcfg.exchange_timeout = opts.exchange_timeout;
        pcfg.default_session_lifetime = opts.default_session_lifetime;
        pcfg.reauth_margin = opts.reauth_margin;
        OwnAuth {
            coap_eap: CoapEapPeer::new(pcfg),
            aka: EapAkaPeer::new(AkaPeerConfig {
                permanent_identity: cfg.eap_identity(),
                network_name: Some(cfg.network_name.clone()),
                result_indication: false,
            }),
            usim: Usim::new(&cfg.k, &cfg.opc, cfg.usim.clone()),
            rng,
            msk_given: false,
            running: false,
            offer: None,
            out: VecDeque::new(),
        }
    }

    /// Start (or restart) an authentication: trigger `POST /.well-known/coap-eap`.
    pub(crate) fn start(&mut self, now: Instant) {
        self.coap_eap.start(now);
        self.pump(now);
    }

    /// An authentication is under way (trigger sent, not finished).
    pub(crate) fn is_running(&self) -> bool {
        self.running
    }

    pub(crate) fn handle_message(&mut self, now: Instant, msg: &Message) {
        self.coap_eap.handle_message(now, msg);
        self.pump(now);
    }

    pub(crate) fn handle_oscore_message(&mut self, now: Instant, msg: &Message) {
        self.coap_eap.handle_oscore_message(now, msg);
        self.pump(now);
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.coap_eap.poll_timeout()
    }

    /// The offer of the run in progress (from the network's first request; authenticated
    /// only once that run succeeds, RFC 9820 §6.2), else of the last successful run
    /// (PROTOCOL.md §4.1, `GatewayOptions::first_batch_with_auth`).
    pub(crate) fn offer_in_progress(&self) -> Option<CoapEapInfo> {
        let current = if self.running {
            self.coap_eap.authenticator_offer()
        } else {
            None
        };
        current.or_else(|| self.offer.clone())
    }

    /// What the network offered in the first request of the gateway's last successful
    /// CoAP-EAP run (cipher-suite list as sent, RID-C; RFC 9820 §5.1): the network makes
    /// the same offer to every peer (`LinkConfig::cipher_suites`, `LinkConfig::rid_c`), so
    /// the gateway can send devices the same first request (PROTOCOL.md §5). No secret.
    pub(crate) fn network_offer(&self) -> Option<&CoapEapInfo> {
        self.offer.as_ref()
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        self.coap_eap.handle_timeout(now);
        self.pump(now);
    }

    pub(crate) fn poll_output(&mut self) -> Option<AuthOutput> {
        self.out.pop_front()
    }

    /// Drive the CoAP-EAP peer and the EAP-AKA' peer until neither has output.
    fn pump(&mut self, now: Instant) {
        while let Some(ev) = self.coap_eap.poll_event() {
            match ev {
                PeerEvent::Transmit(m) => {
                    if is_trigger(&m) {
                        // A new run (ours, or the peer's own re-authentication, RFC 9820 §3.4).
                        self.running = true;
                        self.msk_given = false;
                    }
                    self.out.push_back(AuthOutput::Transmit(m));
                }
                PeerEvent::TransmitProtected(m) => {
                    self.out.push_back(AuthOutput::TransmitProtected(m))
                }
                PeerEvent::EapRequest(req) => {
                    self.aka.handle_request(&req, &mut self.rng);
                    self.drain_aka(now);
                    // RFC 9820 §3.3: the EAP-Success comes OSCORE-protected with keys from
                    // the MSK, so the MSK is needed right after the AKA'-Challenge.
                    if !self.msk_given {
                        if let Some((msk, _)) = self.aka.keys_in_progress() {
                            self.msk_given = self.coap_eap.provide_msk(msk).is_ok();
                        }
                    }
                }
                PeerEvent::KeysReady(material) => match context_from(&material) {
                    Ok(ctx) => self.out.push_back(AuthOutput::NewContext(ctx)),
                    Err(e) => {
                        self.running = false;
                        self.out
                            .push_back(AuthOutput::Failed(AuthFailure::Oscore(e)));
                    }
                },
                PeerEvent::Authenticated {
                    session_lifetime,
                    eap_success,
                } => {
                    self.running = false;
                    self.offer = self.coap_eap.authenticator_offer();
                    // Let the EAP method complete on the EAP-Success (RFC 3748 §4.2); the
                    // keys it confirms were already handed over and are dropped here.
                    self.aka.handle_request(&eap_success, &mut self.rng);
                    self.drain_aka(now);
                    self.out
                        .push_back(AuthOutput::Authenticated(session_lifetime));
                }
                PeerEvent::SessionExpired => self.out.push_back(AuthOutput::SessionExpired),
                PeerEvent::Failed(f) => {
                    self.running = false;
                    self.out
                        .push_back(AuthOutput::Failed(AuthFailure::CoapEap(f)));
                }
                _ => {}
            }
        }
    }

    fn drain_aka(&mut self, now: Instant) {
        while let Some(ev) = self.aka.poll_event() {
            match ev {
                AkaPeerEvent::Send(resp) => {
                    // Fails only if no request waits (then the peer times out on its own).
                    let _ = self.coap_eap.provide_eap_response(now, &resp);
                }
                AkaPeerEvent::RunAka { rand, autn } => {
                    let r = self.usim.authenticate(&rand, &autn);
                    self.aka.provide_aka(r);
                }
                // Success (keys dropped, see above) and Failure (the CoAP-EAP peer reports
                // the failure when the EAP-Failure or the timeout comes).
                _ => {}
            }
        }
    }
}

/// The gateway-link OSCORE context from the CoAP-EAP material (RFC 9820 §6.2: no ID
/// Context; RFC 8613 §3.2 defaults otherwise; volatile SSN since the context is fresh per
/// authentication, RFC 8613 Appendix B.2).
fn context_from(m: &OscoreMaterial) -> Result<SecurityContext, capillary_oscore::OscoreError> {
    let mut p = ContextParams::new(m.master_secret.expose(), &m.sender_id, &m.recipient_id);
    p.master_salt = m.master_salt.expose();
    SecurityContext::new(p)
}
