//! The 82540EM's internal PHY (a Marvell 88E1011, PHY address 1), reached through MDIC
//! (8254x SDM §13.4.7; PHY registers §13.5 / Table 13-x): always linked at 1000 Mb/s full
//! duplex with auto-negotiation complete.

pub const PHY_ADDR: u32 = 1;

pub const PHY_CTRL: usize = 0x00;
pub const PHY_STATUS: usize = 0x01;
pub const PHY_ID1: usize = 0x02;
pub const PHY_ID2: usize = 0x03;
pub const PHY_AUTONEG_ADV: usize = 0x04;
pub const PHY_LP_ABILITY: usize = 0x05;
pub const PHY_AUTONEG_EXP: usize = 0x06;
pub const PHY_1000T_CTRL: usize = 0x09;
pub const PHY_1000T_STATUS: usize = 0x0a;
pub const PHY_EXT_STATUS: usize = 0x0f;
pub const M88_PHY_SPEC_CTRL: usize = 0x10;
pub const M88_PHY_SPEC_STATUS: usize = 0x11;
pub const M88_EXT_PHY_SPEC_CTRL: usize = 0x14;

/// PHY control bits.
pub const MII_CR_RESET: u16 = 1 << 15;
pub const MII_CR_RESTART_AUTO_NEG: u16 = 1 << 9;
/// PHY status: link up, auto-negotiation complete.
pub const MII_SR_LINK_STATUS: u16 = 1 << 2;
pub const MII_SR_AUTONEG_COMPLETE: u16 = 1 << 5;
/// 88E1011 identifier (OUI 0x005043, model 0x02): the driver's M88E1011_I_PHY_ID, 0x01410C20.
pub const M88E1011_ID1: u16 = 0x0141;
pub const M88E1011_ID2: u16 = 0x0c20;

#[derive(Debug, Clone)]
pub struct Phy {
    regs: [u16; 32],
}

impl Phy {
    pub fn new() -> Self {
        let mut regs = [0u16; 32];
        // Auto-negotiation enabled, full duplex, 1000 Mb/s (speed MSB).
        regs[PHY_CTRL] = 0x1140;
        // 100BASE-TX/10BASE-T FD/HD capable, extended status, preamble suppression,
        // auto-negotiation capable + complete, link up, extended capabilities.
        regs[PHY_STATUS] = 0x796d;
        regs[PHY_ID1] = M88E1011_ID1;
        regs[PHY_ID2] = M88E1011_ID2;
        regs[PHY_AUTONEG_ADV] = 0x01e1;
        // Link partner: 10/100 FD/HD, acknowledged, next page.
        regs[PHY_LP_ABILITY] = 0x45e0;
        regs[PHY_AUTONEG_EXP] = 0x0001;
        regs[PHY_1000T_CTRL] = 0x0300;
        // Local and remote receiver OK, link partner 1000BASE-T FD and HD capable.
        regs[PHY_1000T_STATUS] = 0x3c00;
        regs[PHY_EXT_STATUS] = 0x3000;
        regs[M88_PHY_SPEC_CTRL] = 0x0068;
        // Speed 1000 (10b in 15:14), full duplex, speed/duplex resolved, link up.
        regs[M88_PHY_SPEC_STATUS] = 0xac00;
        regs[M88_EXT_PHY_SPEC_CTRL] = 0x0c60;
        Phy { regs }
    }

    pub fn read(&self, reg: usize, link_up: bool) -> u16 {
        let v = self.regs[reg & 31];
        match reg & 31 {
            PHY_STATUS if !link_up => v & !(MII_SR_LINK_STATUS | MII_SR_AUTONEG_COMPLETE),
            M88_PHY_SPEC_STATUS if !link_up => v & !(1 << 10),
            _ => v,
        }
    }

    pub fn write(&mut self, reg: usize, val: u16) {
        match reg & 31 {
            // Self-clearing reset and restart-autonegotiation; a reset restores defaults.
            PHY_CTRL => {
                if val & MII_CR_RESET != 0 {
                    *self = Phy::new();
                }
                self.regs[PHY_CTRL] = val & !(MII_CR_RESET | MII_CR_RESTART_AUTO_NEG);
            }
            // Read-only: status, identifiers, link partner, status registers.
            PHY_STATUS | PHY_ID1 | PHY_ID2 | PHY_LP_ABILITY | PHY_AUTONEG_EXP
            | PHY_1000T_STATUS | PHY_EXT_STATUS | M88_PHY_SPEC_STATUS => {}
            r => self.regs[r] = val,
        }
    }
}

impl Default for Phy {
    fn default() -> Self {
        Self::new()
    }
}
