//! The serial EEPROM (8254x SDM §5): a 64-word Microwire part (93C46, EECD.EE_SIZE = 0),
//! read either through EERD (§13.4.4) or by bit-banging EECD (§5.3.1, §13.4.3) as the Linux
//! `e1000` driver does for the 82540.

use super::regs::*;

/// Words in the EEPROM (64 × 16 bits; 6 address bits).
pub const EEPROM_WORDS: usize = 64;
/// Word 0x3F makes the sum of words 0..=0x3F equal this (§5.6.13).
pub const EEPROM_SUM: u16 = 0xbaba;
const ADDR_BITS: u32 = 6;
/// Microwire READ: start bit 1, opcode 10 (§5.3.1).
const OPCODE_READ: u32 = 0b110;

/// Builds the EEPROM image of an 82540EM board (§5.6, Table 5-2).
pub fn image(mac: [u8; 6], device_id: u16, subsys_vendor: u16, subsys_id: u16) -> [u16; 64] {
    let mut w = [0xffffu16; EEPROM_WORDS];
    // 0x00-0x02: Ethernet address, byte 0 in the low byte of word 0 (§5.6.1).
    for i in 0..3 {
        w[i] = u16::from_le_bytes([mac[2 * i], mac[2 * i + 1]]);
    }
    w[0x03] = 0x0000; // compatibility: nothing special
    w[0x04] = 0xffff; // LED configuration: defaults
    w[0x05] = 0x0001; // EEPROM image version
    w[0x06] = 0x0000;
    w[0x07] = 0x0000;
    w[0x08] = 0x4b56; // PBA number (printed by the driver only)
    w[0x09] = 0x4d30;
    // 0x0A Initialization Control Word 1 (§5.6.7): signature 01b in bits 15:14, load the
    // subsystem and device IDs from the EEPROM (bits 0 and 1).
    w[0x0a] = 0x4000 | 0x0003;
    w[0x0b] = subsys_id;
    w[0x0c] = subsys_vendor;
    w[0x0d] = device_id;
    w[0x0e] = 0x8086;
    // 0x0F Initialization Control Word 2 (§5.6.12): PAUSE and ASM_DIR (full flow control
    // advertised), as on the boards.
    w[0x0f] = 0x3000;
    // 0x10-0x23: software and reserved words left unprogrammed; 0x24 Initialization Control
    // Word 3 (no wake-up, APM off).
    w[0x24] = 0x0000;
    w[0x3f] = 0;
    let sum = w[..0x3f].iter().fold(0u16, |s, &x| s.wrapping_add(x));
    w[0x3f] = EEPROM_SUM.wrapping_sub(sum);
    w
}

/// The Microwire shift state behind EECD.
#[derive(Debug, Clone, Default)]
pub struct Microwire {
    /// Bits shifted in since CS went high (opcode and address).
    shift_in: u32,
    bits_in: u32,
    /// While reading: the word address and how many data bits were clocked out (1..=16).
    reading: Option<(usize, u32)>,
    sk: bool,
    cs: bool,
}

impl Microwire {
    /// EECD as the driver last wrote it, with DO driven by the EEPROM.
    pub fn eecd(&self, written: u32, words: &[u16; 64]) -> u32 {
        let mut v = (written & EECD_WRITABLE) | EECD_PRES;
        if written & EECD_REQ != 0 {
            v |= EECD_GNT;
        }
        if self.dout(words) {
            v |= EECD_DO;
        }
        v
    }

    fn dout(&self, words: &[u16; 64]) -> bool {
        match self.reading {
            Some((addr, n)) if (1..=16).contains(&n) => {
                words[addr % EEPROM_WORDS] >> (16 - n) & 1 != 0
            }
            // Idle / dummy bit after the address: 0 while selected.
            _ => !self.cs,
        }
    }

    /// The driver wrote EECD.
    pub fn write(&mut self, v: u32) {
        let cs = v & EECD_CS != 0;
        let sk = v & EECD_SK != 0;
        if !cs {
            *self = Microwire::default();
            self.sk = sk;
            return;
        }
        let rising = sk && !self.sk;
        self.cs = true;
        self.sk = sk;
        if !rising {
            return;
        }
        if let Some((addr, n)) = self.reading {
            // Sequential read: after the 16th bit the next word follows.
            self.reading = Some(if n >= 16 {
                ((addr + 1) % EEPROM_WORDS, 1)
            } else {
                (addr, n + 1)
            });
            return;
        }
        let di = u32::from(v & EECD_DI != 0);
        if self.bits_in == 0 && di == 0 {
            // Leading zeros before the start bit are ignored.
            return;
        }
        self.shift_in = (self.shift_in << 1) | di;
        self.bits_in += 1;
        if self.bits_in == 3 + ADDR_BITS {
            let opcode = self.shift_in >> ADDR_BITS;
            let addr = (self.shift_in & ((1 << ADDR_BITS) - 1)) as usize;
            if opcode == OPCODE_READ {
                self.reading = Some((addr, 0));
            } else {
                // Write/erase/EWEN: the EEPROM is read-only here; ignore the rest of the cycle.
                self.bits_in = u32::MAX / 2;
            }
        }
    }
}
