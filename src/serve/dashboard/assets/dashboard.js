// evosync dashboard: the live feed. Opens the event stream of /dashboard/events and adds each event to the top of
// #live-feed as a row built from text nodes (never markup), so whatever an event carries shows as text. Pages work
// without this script; it only keeps the feed current.
'use strict';

(function () {
  const feed = document.getElementById('live-feed');
  const status = document.getElementById('live-status');
  if (!feed || !status || !window.EventSource) {
    return;
  }
  const MAX_ROWS = 300;

  function setStatus(state, text) {
    status.dataset.state = state;
    status.textContent = text;
  }

  function when(at) {
    const date = typeof at === 'number' ? new Date(at * 1000) : new Date(at);
    if (isNaN(date.getTime())) {
      return '';
    }
    return date.toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
  }

  function bytes(n) {
    if (typeof n !== 'number') {
      return 'no replica';
    }
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let value = n;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return unit === 0 ? n + ' B' : value.toFixed(value < 10 ? 1 : 0) + ' ' + units[unit];
  }

  // What a row says, by the event's type: [kind, ok?, text].
  function describe(event) {
    switch (event.type) {
      case 'push':
        return ['push', event.exit === '0', event.database + ': exit ' + event.exit + ' after ' +
          Number(event.seconds).toFixed(2) + ' s, replica ' + bytes(event.replica_bytes)];
      case 'upload':
        return ['upload', true, event.subdir + '/' + event.name + ' (' + bytes(event.bytes) + ')' +
          (event.replaced ? ', replacing the previous version' : '')];
      case 'refusal':
        return ['refusal', false, event.source + ', ' + event.reason +
          (event.status ? ' (' + event.status + ')' : '') + (event.client ? ' from ' + event.client : '') +
          ': ' + event.message];
      case 'admin':
        return ['admin', true, event.action + ' ' + event.subject + ' by ' + event.actor];
      case 'verified':
        return ['verified', event.ok !== false, (event.database || '') + ' ' + (event.ok === false ?
          'failed verification: ' + (event.reason || '') : 'passed verification')];
      case 'published':
        return ['published', true, 'published in the catalog'];
      case 'lagged':
        return ['lagged', false, event.missed + ' events came too fast for this page and are not shown: reload it ' +
          'for the latest'];
      case 'withdrawn':
        return ['withdrawn', false, 'withdrawn from the catalog' + (event.reason ? ': ' + event.reason : '')];
      default:
        return [String(event.type || 'event'), true, JSON.stringify(event)];
    }
  }

  function span(className, text) {
    const element = document.createElement('span');
    element.className = className;
    element.textContent = text;
    return element;
  }

  function row(event) {
    const [kind, ok, text] = describe(event);
    const item = document.createElement('li');
    item.className = 'event live ' + kind.replace(/[^a-z-]/g, '') + ' ' + (ok ? 'ok' : 'bad');
    const time = document.createElement('time');
    time.textContent = when(event.at);
    item.append(time, ' ', span('kind', kind));
    if (event.party) {
      item.append(' ', span('party', event.party));
    }
    if (event.run) {
      const link = document.createElement('a');
      link.className = 'run';
      link.href = '/dashboard/runs/' + encodeURIComponent(event.run);
      link.textContent = event.run;
      item.append(' ', link);
    }
    item.append(' ', span('text', text));
    return item;
  }

  const source = new EventSource('/dashboard/events');
  setStatus('connecting', 'Connecting to the live feed…');
  source.addEventListener('open', function () {
    setStatus('open', 'Live: new events appear at the top as they happen.');
  });
  source.addEventListener('error', function () {
    if (source.readyState === EventSource.CLOSED) {
      setStatus('closed', 'The live feed stopped (signed out, or the service went away). Reload the page to sign in again.');
    } else {
      setStatus('connecting', 'The live feed lost its connection; trying again…');
    }
  });
  source.addEventListener('message', function (message) {
    let event;
    try {
      event = JSON.parse(message.data);
    } catch (error) {
      return;
    }
    const empty = feed.querySelector('li.empty');
    if (empty) {
      empty.remove();
    }
    feed.prepend(row(event));
    while (feed.children.length > MAX_ROWS) {
      feed.lastElementChild.remove();
    }
  });
}());
