//! Authentication vectors, AUTN / AUTS, and a USIM model with the sequence-number management of
//! TS 33.102 Annex C.2.
//!
//! Network side: [`generate_vector`] (TS 33.102 §6.3.2) and [`verify_auts`] (§6.3.5).
//! USIM side: [`Usim::authenticate`] (§6.3.3) and [`build_auts`].

use crate::error::AkaError;
use crate::milenage::Milenage;
use capillary_secrets::{Amf, Autn, Auts, Ck, Ik, Opc, Rand, Res, Sqn, K};
use core::fmt;
use subtle::ConstantTimeEq;

/// The AMF used in the AUTS computation: a dummy value of all zeros (TS 33.102 §6.3.3).
pub const AUTS_AMF: Amf = Amf([0, 0]);

/// Largest IND length accepted by [`Usim`] (the SEQ array has `1 << ind_len` entries).
pub const MAX_IND_LEN: u8 = 16;

/// An authentication vector (TS 33.102 §6.3.2): RAND, AUTN, XRES, CK, IK.
#[derive(Debug)]
pub struct AuthVector {
    /// The challenge.
    pub rand: Rand,
    /// AUTN = SQN ⊕ AK ‖ AMF ‖ MAC.
    pub autn: Autn,
    /// Expected response XRES = f2(RAND), 8 bytes.
    pub xres: Res,
    /// CK = f3(RAND).
    pub ck: Ck,
    /// IK = f4(RAND).
    pub ik: Ik,
}

/// The three fields of AUTN (TS 33.102 §6.3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AutnParts {
    /// SQN ⊕ AK (SQN in the clear when AK is not used).
    pub sqn_xor_ak: [u8; 6],
    /// Authentication management field.
    pub amf: Amf,
    /// MAC-A = f1(SQN ‖ RAND ‖ AMF).
    pub mac: [u8; 8],
}

/// Splits AUTN into SQN ⊕ AK, AMF and MAC (TS 33.102 §6.3.2).
pub fn split_autn(autn: &Autn) -> AutnParts {
    let a = &autn.0;
    AutnParts {
        sqn_xor_ak: [a[0], a[1], a[2], a[3], a[4], a[5]],
        amf: Amf([a[6], a[7]]),
        mac: [a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]],
    }
}

/// Joins SQN ⊕ AK, AMF and MAC into AUTN (TS 33.102 §6.3.2).
pub fn join_autn(parts: &AutnParts) -> Autn {
    let mut out = [0u8; 16];
    out[..6].copy_from_slice(&parts.sqn_xor_ak);
    out[6..8].copy_from_slice(&parts.amf.0);
    out[8..].copy_from_slice(&parts.mac);
    Autn(out)
}

/// Splits AUTS into SQN_MS ⊕ AK* and MAC-S (TS 33.102 §6.3.3).
pub fn split_auts(auts: &Auts) -> ([u8; 6], [u8; 8]) {
    let a = &auts.0;
    (
        [a[0], a[1], a[2], a[3], a[4], a[5]],
        [a[6], a[7], a[8], a[9], a[10], a[11], a[12], a[13]],
    )
}

fn xor6(a: &[u8; 6], b: &[u8; 6]) -> [u8; 6] {
    let mut out = [0u8; 6];
    for i in 0..6 {
        out[i] = a[i] ^ b[i];
    }
    out
}

/// Generates an authentication vector (TS 33.102 §6.3.2):
/// MAC = f1(SQN ‖ RAND ‖ AMF), XRES = f2, CK = f3, IK = f4, AK = f5,
/// AUTN = SQN ⊕ AK ‖ AMF ‖ MAC.
pub fn generate_vector(m: &Milenage, rand: &Rand, sqn: &Sqn, amf: &Amf) -> AuthVector {
    let mac = m.f1(rand, sqn, amf);
    let (xres, ck, ik, ak) = m.f2345(rand);
    let autn = join_autn(&AutnParts {
        sqn_xor_ak: xor6(&sqn.to_bytes(), &ak),
        amf: *amf,
        mac,
    });
    AuthVector {
        rand: *rand,
        autn,
        xres,
        ck,
        ik,
    }
}

/// USIM side of resynchronisation (TS 33.102 §6.3.3):
/// AUTS = SQN_MS ⊕ AK* ‖ MAC-S, with AK* = f5*(RAND) and MAC-S = f1*(SQN_MS ‖ RAND ‖ AMF = 0x0000).
pub fn build_auts(m: &Milenage, rand: &Rand, sqn_ms: &Sqn) -> Auts {
    let ak_star = m.f5_star(rand);
    let mac_s = m.f1_star(rand, sqn_ms, &AUTS_AMF);
    let mut out = [0u8; 14];
    out[..6].copy_from_slice(&xor6(&sqn_ms.to_bytes(), &ak_star));
    out[6..].copy_from_slice(&mac_s);
    Auts(out)
}

/// Network side of resynchronisation (TS 33.102 §6.3.5): recovers SQN_MS = (SQN_MS ⊕ AK*) ⊕ f5*(RAND)
/// and checks MAC-S = f1*(SQN_MS ‖ RAND ‖ AMF = 0x0000) (AMF per §6.3.3) in constant time.
///
/// `rand` is the RAND of the vector the USIM rejected. On success returns SQN_MS; the caller
/// then sets SQN_HE so that the next vector is fresh (e.g. SEQ_MS + 1 with a chosen IND).
pub fn verify_auts(m: &Milenage, rand: &Rand, auts: &Auts) -> Result<Sqn, AkaError> {
    let (conc, mac_s) = split_auts(auts);
    let ak_star = m.f5_star(rand);
    let sqn_ms = Sqn::from_bytes(xor6(&conc, &ak_star));
    let xmac_s = m.f1_star(rand, &sqn_ms, &AUTS_AMF);
    if bool::from(xmac_s.ct_eq(&mac_s)) {
        Ok(sqn_ms)
    } else {
        Err(AkaError::MacFailure)
    }
}

/// Checks the AMF separation bit of AUTN, which must be 1 for EAP-AKA' (RFC 9048 §3.2,
/// TS 33.401 Annex H).
pub fn check_amf_separation(autn: &Autn) -> Result<(), AkaError> {
    if split_autn(autn).amf.separation_bit() {
        Ok(())
    } else {
        Err(AkaError::AmfSeparationBit)
    }
}

/// Parameters of the USIM sequence-number check (TS 33.102 Annex C).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsimConfig {
    /// Length of IND in bits (Annex C.1.2; default 5, i.e. 32 lanes).
    pub ind_len: u8,
    /// Δ, the largest accepted SEQ − SEQ_MS, protecting against counter wrap-around
    /// (Annex C.2.2, C.3.2; default 2^28).
    pub delta: u64,
    /// Optional age limit L: when non-zero, a SEQ with SEQ_MS − SEQ ≥ L is rejected
    /// (Annex C.2.2). Default 0 (off).
    pub l: u64,
}

impl Default for UsimConfig {
    fn default() -> Self {
        Self {
            ind_len: 5,
            delta: 1 << 28,
            l: 0,
        }
    }
}

/// Result of [`Usim::authenticate`] once MAC-A has verified.
#[derive(Debug)]
pub enum UsimOutcome {
    /// SQN accepted: RES, CK and IK (TS 33.102 §6.3.3).
    Success {
        /// RES = f2(RAND).
        res: Res,
        /// CK = f3(RAND).
        ck: Ck,
        /// IK = f4(RAND).
        ik: Ik,
    },
    /// SQN not fresh: send AUTS (TS 33.102 §6.3.3, EAP-AKA Synchronization-Failure).
    SyncFailure {
        /// AUTS built from [`Usim::sqn_ms`].
        auts: Auts,
    },
}

/// A software USIM: Milenage plus the SEQ array of TS 33.102 Annex C.2.
///
/// `Debug` prints only the IND length.
pub struct Usim {
    milenage: Milenage,
    cfg: UsimConfig,
    /// SEQ_MS(i) for every IND value i (Annex C.2.2).
    seq: Vec<u64>,
    /// The highest accepted SQN anywhere in the array (SEQ_MS ‖ IND of it).
    highest: Sqn,
}

impl fmt::Debug for Usim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Usim")
            .field("ind_len", &self.cfg.ind_len)
            .finish_non_exhaustive()
    }
}

impl Usim {
    /// A fresh USIM with every SEQ_MS(i) = 0 (Annex C.2.2).
    ///
    /// # Panics
    /// If `cfg.ind_len` exceeds [`MAX_IND_LEN`]; use [`Usim::try_new`] to get an error instead.
    pub fn new(k: &K, opc: &Opc, cfg: UsimConfig) -> Self {
        match Self::try_new(k, opc, cfg) {
            Ok(u) => u,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`Usim::new`], but returns [`AkaError::InvalidIndLen`] for an IND length over 16.
    pub fn try_new(k: &K, opc: &Opc, cfg: UsimConfig) -> Result<Self, AkaError> {
        if cfg.ind_len > MAX_IND_LEN {
            return Err(AkaError::InvalidIndLen {
                ind_len: cfg.ind_len,
            });
        }
        let lanes = 1usize << cfg.ind_len;
        Ok(Self {
            milenage: Milenage::new(k, opc),
            cfg,
            seq: vec![0; lanes],
            highest: Sqn::default(),
        })
    }

    /// Restores a USIM from a saved SEQ array, which must have `1 << ind_len` entries, each
    /// a SEQ of at most `48 − ind_len` bits.
    pub fn restore(k: &K, opc: &Opc, cfg: UsimConfig, seq_array: &[u64]) -> Result<Self, AkaError> {
        let mut usim = Self::try_new(k, opc, cfg)?;
        if seq_array.len() != usim.seq.len() {
            return Err(AkaError::SeqArrayLength {
                expected: usim.seq.len(),
                got: seq_array.len(),
            });
        }
        let ind_len = usim.cfg.ind_len;
        let mut highest = Sqn::default();
        for (ind, &seq) in seq_array.iter().enumerate() {
            let sqn = Sqn::from_seq_ind(seq, ind as u32, ind_len).ok_or(AkaError::SqnOutOfRange)?;
            if seq > highest.seq(ind_len) {
                highest = sqn;
            }
        }
        usim.seq.copy_from_slice(seq_array);
        usim.highest = highest;
        Ok(usim)
    }

    /// The configuration.
    pub fn config(&self) -> &UsimConfig {
        &self.cfg
    }

    /// SEQ_MS(i) for every IND value i, to persist and later pass to [`Usim::restore`].
    pub fn seq_array(&self) -> &[u64] {
        &self.seq
    }

    /// SQN_MS: the highest previously accepted SQN anywhere in the array (SEQ_MS ‖ IND),
    /// the value sent in AUTS (TS 33.102 §6.3.3, Annex C.2.2).
    pub fn sqn_ms(&self) -> Sqn {
        self.highest
    }

    /// Checks the AMF separation bit of `autn` (RFC 9048 §3.2); see [`check_amf_separation`].
    pub fn check_amf_separation(&self, autn: &Autn) -> Result<(), AkaError> {
        check_amf_separation(autn)
    }

    /// Runs the USIM side of AKA (TS 33.102 §6.3.3): computes AK and SQN, verifies MAC-A
    /// **before** looking at SQN ([`AkaError::MacFailure`] leaves the state unchanged), then checks
    /// freshness per Annex C.2.2:
    ///
    /// - SEQ > SEQ_MS(IND) (each IND lane independent);
    /// - SEQ − SEQ_MS ≤ Δ, where SEQ_MS is the highest SEQ in the array;
    /// - if L ≠ 0, SEQ_MS − SEQ < L.
    ///
    /// A fresh SQN updates SEQ_MS(IND) and yields RES, CK, IK; otherwise the USIM answers with
    /// AUTS built from [`Usim::sqn_ms`] and the state is unchanged.
    pub fn authenticate(&mut self, rand: &Rand, autn: &Autn) -> Result<UsimOutcome, AkaError> {
        let parts = split_autn(autn);
        let (res, ck, ik, ak) = self.milenage.f2345(rand);
        let sqn = Sqn::from_bytes(xor6(&parts.sqn_xor_ak, &ak));
        let xmac = self.milenage.f1(rand, &sqn, &parts.amf);
        if !bool::from(xmac.ct_eq(&parts.mac)) {
            return Err(AkaError::MacFailure);
        }
        if !self.is_fresh(sqn) {
            let auts = build_auts(&self.milenage, rand, &self.highest);
            return Ok(UsimOutcome::SyncFailure { auts });
        }
        let ind_len = self.cfg.ind_len;
        let (seq, ind) = (sqn.seq(ind_len), sqn.ind(ind_len) as usize);
        self.seq[ind] = seq;
        if seq > self.highest.seq(ind_len) {
            self.highest = sqn;
        }
        Ok(UsimOutcome::Success { res, ck, ik })
    }

    /// The freshness rules of Annex C.2.2.
    fn is_fresh(&self, sqn: Sqn) -> bool {
        let ind_len = self.cfg.ind_len;
        let seq = sqn.seq(ind_len);
        let ind = sqn.ind(ind_len) as usize;
        let Some(&lane) = self.seq.get(ind) else {
            return false;
        };
        if seq <= lane {
            return false;
        }
        let seq_ms = self.highest.seq(ind_len);
        if seq > seq_ms && seq - seq_ms > self.cfg.delta {
            return false;
        }
        if self.cfg.l != 0 && seq_ms > seq && seq_ms - seq >= self.cfg.l {
            return false;
        }
        true
    }
}
