//! The authentication centre: fresh authentication vectors and resynchronisation over the
//! subscriber store (TS 33.102 §6.3.2, §6.3.5, Annex C.3).
//!
//! The store allocates each SQN durably before the vector exists, so a vector that leaves the
//! process never carries an SQN that could be issued again after a crash.

use std::sync::Arc;

use capillary_aka::vector::{generate_vector, verify_auts, AuthVector};
use capillary_aka::Milenage;
use capillary_secrets::{Auts, Imsi, Rand};
use capillary_store::{AuthMaterial, OpKind, StoreError, SubscriberKind, SubscriberStore};
use rand::RngCore;

/// Why no vector could be produced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AucError {
    /// The IMSI is not provisioned.
    #[error("unknown subscriber")]
    UnknownSubscriber,
    /// The subscriber is barred.
    #[error("subscriber barred")]
    Barred,
    /// The subscriber exists but is of the other kind (a device presenting itself as a gateway,
    /// or the reverse).
    #[error("subscriber is of the wrong kind")]
    WrongKind,
    /// The AUTS from the peer did not verify (MAC-S wrong).
    #[error("AUTS did not verify")]
    BadAuts,
    /// The store failed.
    #[error("store: {0}")]
    Store(StoreError),
}

impl From<StoreError> for AucError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownSubscriber => AucError::UnknownSubscriber,
            StoreError::Barred => AucError::Barred,
            other => AucError::Store(other),
        }
    }
}

/// Authentication centre of one network-side instance, owning one IND lane.
#[derive(Clone)]
pub struct Auc {
    store: Arc<dyn SubscriberStore>,
    ind: u32,
}

impl std::fmt::Debug for Auc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auc")
            .field("ind", &self.ind)
            .finish_non_exhaustive()
    }
}

fn milenage(mat: &AuthMaterial) -> Milenage {
    match &mat.op {
        OpKind::Opc(opc) => Milenage::new(&mat.k, opc),
        OpKind::Op(op) => Milenage::with_op(&mat.k, op),
    }
}

impl Auc {
    /// An AuC allocating SQNs in lane `ind`.
    pub fn new(store: Arc<dyn SubscriberStore>, ind: u32) -> Self {
        Self { store, ind }
    }

    /// The store behind this AuC.
    pub fn store(&self) -> &Arc<dyn SubscriberStore> {
        &self.store
    }

    /// One fresh vector for EAP-AKA': the AMF separation bit is set (TS 33.402 §6.1,
    /// RFC 9048 §3.1 "AMF separation bit").
    pub async fn vector(&self, imsi: &Imsi) -> Result<AuthVector, AucError> {
        let mat = self.store.allocate(imsi, self.ind, 1).await?;
        let sqn = mat.sqns.first().copied().ok_or_else(|| {
            AucError::Store(StoreError::Corrupt("allocation returned no SQN".into()))
        })?;
        let mut amf = mat.amf;
        amf.0[0] |= 0x80;
        let mut rand = Rand([0; 16]);
        rand::rngs::OsRng.fill_bytes(&mut rand.0);
        Ok(generate_vector(&milenage(&mat), &rand, &sqn, &amf))
    }

    /// One fresh vector for each request, with ONE store round trip for the whole batch
    /// (`allocate_batch`, one transaction). A subscriber whose kind differs from the expected
    /// one gets [`AucError::WrongKind`]; its SQN is still consumed, which is harmless.
    pub async fn vectors(
        &self,
        requests: &[(Imsi, SubscriberKind)],
    ) -> Result<Vec<Result<AuthVector, AucError>>, AucError> {
        let reqs: Vec<(Imsi, u32, u32)> = requests
            .iter()
            .map(|(imsi, _)| (imsi.clone(), self.ind, 1))
            .collect();
        let materials = self.store.allocate_batch(&reqs).await?;
        Ok(materials
            .into_iter()
            .zip(requests)
            .map(|(mat, (_, kind))| {
                let mat = mat?;
                if mat.kind != *kind {
                    return Err(AucError::WrongKind);
                }
                let sqn = mat.sqns.first().copied().ok_or_else(|| {
                    AucError::Store(StoreError::Corrupt("allocation returned no SQN".into()))
                })?;
                let mut amf = mat.amf;
                amf.0[0] |= 0x80;
                let mut rand = Rand([0; 16]);
                rand::rngs::OsRng.fill_bytes(&mut rand.0);
                Ok(generate_vector(&milenage(&mat), &rand, &sqn, &amf))
            })
            .collect())
    }

    /// Resynchronisation (TS 33.102 §6.3.5): verifies AUTS and moves SEQ_HE up to SEQ_MS, so the
    /// next vector is fresh for the USIM. Returns SEQ_MS.
    pub async fn resync(&self, imsi: &Imsi, rand: &Rand, auts: &Auts) -> Result<u64, AucError> {
        // A zero-count allocation reads the key material without consuming an SQN.
        let mat = self.store.allocate(imsi, self.ind, 0).await?;
        let sqn_ms = verify_auts(&milenage(&mat), rand, auts).map_err(|_| AucError::BadAuts)?;
        let seq_ms = sqn_ms.seq(mat.ind_len);
        self.store.resync(imsi, seq_ms).await?;
        Ok(seq_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capillary_secrets::{Amf, Opc, Secret, K};
    use capillary_store::{MemoryStore, NewSubscriber};

    fn imsi(n: u32) -> Imsi {
        Imsi::new(&format!("0010100000{n:05}")).unwrap()
    }

    #[tokio::test]
    async fn batch_of_vectors_in_one_round_trip() {
        let store = Arc::new(MemoryStore::new());
        let k = K::from_hex("465b5ce8b199b49faa5f0a2ee238a6bc").unwrap();
        let opc = Opc::from_hex("cd63cb71954a9f4e48a5994e37a02baf").unwrap();
        store
            .add(NewSubscriber::new(
                imsi(1),
                k.clone(),
                OpKind::Opc(opc.clone()),
                Amf([0, 0]),
            ))
            .await
            .unwrap();
        let mut gw = NewSubscriber::new(imsi(2), k, OpKind::Opc(opc), Amf([0, 0]));
        gw.kind = SubscriberKind::Gateway;
        store.add(gw).await.unwrap();
        let auc = Auc::new(store.clone(), 3);
        let out = auc
            .vectors(&[
                (imsi(1), SubscriberKind::Device),
                (imsi(2), SubscriberKind::Device),
                (imsi(9), SubscriberKind::Device),
                (imsi(2), SubscriberKind::Gateway),
            ])
            .await
            .unwrap();
        assert_eq!(out.len(), 4);
        let v = out[0].as_ref().unwrap();
        // AMF separation bit forced on (RFC 9048 §3.1), SQN in lane 3.
        assert_eq!(v.autn.0[6] & 0x80, 0x80);
        assert!(matches!(out[1], Err(AucError::WrongKind)));
        assert!(matches!(out[2], Err(AucError::UnknownSubscriber)));
        assert!(out[3].is_ok());
        assert_eq!(store.get(&imsi(1)).await.unwrap().unwrap().seq_he, 1);
    }
}
