// The identity header encodings the Worker shares with Portcullis.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { joinGroups } from '../src/forward.js';

describe('joinGroups', () => {
  it('writes X-Portcullis-Groups as Portcullis does', () => {
    assert.equal(joinGroups(['engineering', 'admins']), 'engineering,admins');
    assert.equal(joinGroups([]), '');
    // Same cases as proxy/proxy_test.go: a name cannot pass for several.
    assert.equal(joinGroups(['engineering,admins', '100%', 'ops\r\nX-Evil: 1']), 'engineering%2Cadmins,100%25,ops%0D%0AX-Evil: 1');
    assert.equal(joinGroups(['équipe', 'a\u007fb']), 'équipe,a%7Fb');
    assert.equal(joinGroups([' admins ', 'Domain Admins', '  x']), '%20admins%20,Domain Admins,%20%20x');
  });
});
