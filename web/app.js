/* mailsrv web page.
 *
 * One file, no framework. How it fits together:
 *   1. DICT: every UI string, in English and Russian; t(key, ...args) picks one.
 *   2. el(): builds DOM nodes. Data from the server only ever goes into text nodes or
 *      safe attributes: no innerHTML anywhere in this file.
 *   3. api(): fetch() with error handling; state-changing requests carry X-Requested-With.
 *   4. route(): the hash (#/, #/mailbox/ADDR, #/search/Q, #/message/ID, #/queue, #/lists,
 *      #/status) decides which view is shown; the Back button just changes the hash.
 *   5. Views: the message list, one message, and the admin pages (queue, lists, status).
 *   6. Live updates from /api/v1/events (Server-Sent Events) and the keyboard shortcuts.
 */
(function () {
  'use strict';

  /* ---------------------------------------------------------------- 1. strings */

  const DICT = {
    en: {
      skip: 'Skip to content',
      navLabel: 'Navigation',
      search: 'Search',
      searchPlaceholder: 'Search mail',
      searchButton: 'Search',
      mailboxes: 'Mailboxes',
      allMail: 'All messages',
      inbox: 'Inbox',
      searchResults: 'Search: {0}',
      admin: 'Administration',
      queue: 'Queue',
      lists: 'Mailing lists',
      status: 'Status',
      captureMode: 'Capture mode',
      messages: 'Messages',
      selectAll: 'Select all',
      selectMessage: 'Select: {0}',
      readSelected: 'Mark as read',
      unreadSelected: 'Mark as unread',
      deleteSelected: 'Delete selected',
      deleteAll: 'Delete all',
      loadMore: 'Load more',
      loading: 'Loading…',
      empty: 'No messages',
      countOf: '{0} of {1}',
      noSubject: '(no subject)',
      unread: 'Unread',
      hasAttachments: 'Has attachments',
      mailboxCount: '{0} unread of {1}',
      back: 'Back to list',
      delete: 'Delete',
      markUnread: 'Mark as unread',
      markedUnread: 'Marked as unread.',
      from: 'From',
      to: 'To',
      cc: 'Cc',
      date: 'Date',
      tabText: 'Text',
      tabHeaders: 'Headers',
      tabRaw: 'Source',
      attachments: 'Attachments',
      attachment: 'attachment {0}',
      showRemote: 'Show remote images',
      frameTitle: 'Message body',
      noText: '(this message has no text part)',
      forwardTo: 'Forward to',
      forward: 'Forward',
      forwarding: 'Forwarding…',
      forwarded: 'Forwarded to {0}.',
      login: 'Log in: reload the page',
      netError: 'Network error: {0}',
      httpError: 'Error {0}: {1}',
      badJson: 'The server sent an answer the page cannot read.',
      confirmDeleteAll: 'Delete all {0} messages in this view? This cannot be undone.',
      confirmQueueDelete: 'Remove message {0} from the queue? It will not be delivered.',
      flush: 'Retry delivery now',
      flushed: 'Delivery started for {0} messages.',
      queueEmpty: 'The queue is empty.',
      queueMore: 'And {0} more messages in the queue.',
      qId: 'ID',
      qFrom: 'Sender',
      qArrived: 'Arrived',
      qSize: 'Size',
      qTries: 'Attempts',
      qNext: 'Next attempt',
      qRcpts: 'Recipients',
      qActions: 'Actions',
      qActive: 'being delivered now',
      qNow: 'now',
      removeFromQueue: 'Delete',
      st_pending: 'pending',
      st_delivered: 'delivered',
      st_bounced: 'bounced',
      listsEmpty: 'There are no mailing lists.',
      owner: 'Owner',
      post: 'Who may post',
      post_owner: 'the owner only',
      post_members: 'members',
      post_anyone: 'anyone',
      posts: 'Messages posted',
      members: 'Members ({0})',
      pending: 'Waiting for confirmation ({0})',
      noMembers: 'No members.',
      noPending: 'Nothing is waiting for confirmation.',
      address: 'Address',
      requested: 'Requested',
      confirmed: 'Confirmed',
      bounces: 'Bounces',
      request: 'Request',
      kind_subscribe: 'subscribe',
      kind_unsubscribe: 'unsubscribe',
      time: 'Time',
      version: 'Version',
      uptime: 'Uptime',
      sessions: 'Open sessions',
      messagesToday: 'Messages today',
      queueLength: 'Messages in the queue',
      listeners: 'Listeners',
      protocol: 'Protocol',
      tls: 'TLS',
      tls_none: 'none',
      tls_starttls: 'STARTTLS',
      tls_implicit: 'implicit TLS',
      days: '{0} d',
      hours: '{0} h',
      minutes: '{0} min',
      seconds: '{0} s',
      kb: '{0} KB',
      mb: '{0} MB',
      none: '—',
    },
    ru: {
      skip: 'Перейти к содержимому',
      navLabel: 'Навигация',
      search: 'Поиск',
      searchPlaceholder: 'Поиск писем',
      searchButton: 'Найти',
      mailboxes: 'Почтовые ящики',
      allMail: 'Все письма',
      inbox: 'Входящие',
      searchResults: 'Поиск: {0}',
      admin: 'Администрирование',
      queue: 'Очередь',
      lists: 'Рассылки',
      status: 'Состояние',
      captureMode: 'Режим перехвата',
      messages: 'Письма',
      selectAll: 'Выбрать все',
      selectMessage: 'Выбрать: {0}',
      readSelected: 'Отметить как прочитанные',
      unreadSelected: 'Отметить как непрочитанные',
      deleteSelected: 'Удалить выбранные',
      deleteAll: 'Удалить все',
      loadMore: 'Показать ещё',
      loading: 'Загрузка…',
      empty: 'Писем нет',
      countOf: '{0} из {1}',
      noSubject: '(без темы)',
      unread: 'Не прочитано',
      hasAttachments: 'Есть вложения',
      mailboxCount: 'Непрочитанных: {0} из {1}',
      back: 'К списку писем',
      delete: 'Удалить',
      markUnread: 'Отметить как непрочитанное',
      markedUnread: 'Письмо отмечено как непрочитанное.',
      from: 'От',
      to: 'Кому',
      cc: 'Копия',
      date: 'Дата',
      tabText: 'Текст',
      tabHeaders: 'Заголовки',
      tabRaw: 'Исходный текст',
      attachments: 'Вложения',
      attachment: 'вложение {0}',
      showRemote: 'Показать внешние изображения',
      frameTitle: 'Текст письма',
      noText: '(в письме нет текстовой части)',
      forwardTo: 'Переслать на адрес',
      forward: 'Переслать',
      forwarding: 'Пересылаем…',
      forwarded: 'Письмо переслано на адрес {0}.',
      login: 'Войдите заново: перезагрузите страницу',
      netError: 'Ошибка сети: {0}',
      httpError: 'Ошибка {0}: {1}',
      badJson: 'Сервер прислал ответ, который страница не может прочитать.',
      confirmDeleteAll: 'Удалить все письма в этом списке ({0})? Отменить это будет нельзя.',
      confirmQueueDelete: 'Удалить письмо {0} из очереди? Оно не будет доставлено.',
      flush: 'Отправить сейчас',
      flushed: 'Начата доставка писем: {0}.',
      queueEmpty: 'Очередь пуста.',
      queueMore: 'И ещё писем в очереди: {0}.',
      qId: 'ID',
      qFrom: 'Отправитель',
      qArrived: 'Получено',
      qSize: 'Размер',
      qTries: 'Попытки',
      qNext: 'Следующая попытка',
      qRcpts: 'Получатели',
      qActions: 'Действия',
      qActive: 'доставляется сейчас',
      qNow: 'сейчас',
      removeFromQueue: 'Удалить',
      st_pending: 'ожидает',
      st_delivered: 'доставлено',
      st_bounced: 'возвращено',
      listsEmpty: 'Рассылок нет.',
      owner: 'Владелец',
      post: 'Кто может писать',
      post_owner: 'только владелец',
      post_members: 'участники',
      post_anyone: 'все',
      posts: 'Писем в рассылке',
      members: 'Участники ({0})',
      pending: 'Ожидают подтверждения ({0})',
      noMembers: 'Участников нет.',
      noPending: 'Нет запросов, ожидающих подтверждения.',
      address: 'Адрес',
      requested: 'Запрос',
      confirmed: 'Подтверждение',
      bounces: 'Возвраты',
      request: 'Запрос',
      kind_subscribe: 'подписка',
      kind_unsubscribe: 'отписка',
      time: 'Время',
      version: 'Версия',
      uptime: 'Время работы',
      sessions: 'Открытые сеансы',
      messagesToday: 'Писем за сегодня',
      queueLength: 'Писем в очереди',
      listeners: 'Прослушиваемые адреса',
      protocol: 'Протокол',
      tls: 'TLS',
      tls_none: 'нет',
      tls_starttls: 'STARTTLS',
      tls_implicit: 'TLS с первого байта',
      days: '{0} д',
      hours: '{0} ч',
      minutes: '{0} мин',
      seconds: '{0} с',
      kb: '{0} КБ',
      mb: '{0} МБ',
      none: '—',
    },
  };

  /* The first of the browser's languages that we have; English otherwise. */
  function pickLang() {
    const wanted = (navigator.languages && navigator.languages.length)
      ? navigator.languages : [navigator.language || 'en'];
    for (const l of wanted) {
      const code = String(l).toLowerCase();
      if (code.startsWith('ru')) return 'ru';
      if (code.startsWith('en')) return 'en';
    }
    return 'en';
  }

  const LANG = pickLang();

  /* t('forwarded', addr): the string for key, with {0}, {1}... replaced by the arguments. */
  function t(key, ...args) {
    let s = DICT[LANG][key];
    if (s === undefined) s = DICT.en[key];
    if (s === undefined) return key;
    args.forEach((a, i) => { s = s.split('{' + i + '}').join(String(a)); });
    return s;
  }

  /* ---------------------------------------------------------------- 2. DOM helpers */

  const $ = (id) => document.getElementById(id);

  /* el('a', {href: '#/', class: 'x'}, 'text', otherNode): a new element. Strings become text
   * nodes; keys starting with "on" are event listeners; hidden/disabled/checked are properties. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') node.className = v;
      else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
      else if (k === 'hidden' || k === 'disabled' || k === 'checked') node[k] = true;
      else node.setAttribute(k, v === true ? '' : String(v));
    }
    append(node, children);
    return node;
  }

  function append(node, children) {
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      if (Array.isArray(c)) append(node, c);
      else node.appendChild(typeof c === 'string' || typeof c === 'number'
        ? document.createTextNode(String(c)) : c);
    }
  }

  /* Replaces all children of node (by id or node) with the given ones. */
  function fill(node, ...children) {
    if (typeof node === 'string') node = $(node);
    node.textContent = '';
    append(node, children);
    return node;
  }

  const enc = encodeURIComponent;

  /* ---------------------------------------------------------------- formatting */

  function fmtDate(iso, long) {
    if (!iso) return t('none');
    const d = new Date(iso);
    if (isNaN(d.getTime())) return String(iso);
    if (long) return d.toLocaleString(LANG);
    const now = new Date();
    if (d.toDateString() === now.toDateString())
      return d.toLocaleTimeString(LANG, { hour: '2-digit', minute: '2-digit' });
    if (d.getFullYear() === now.getFullYear())
      return d.toLocaleDateString(LANG, { day: 'numeric', month: 'short' });
    return d.toLocaleDateString(LANG, { year: 'numeric', month: 'short', day: 'numeric' });
  }

  function fmtSize(bytes) {
    const kb = (Number(bytes) || 0) / 1024;
    if (kb >= 1024) return t('mb', (Math.round(kb / 102.4) / 10).toLocaleString(LANG));
    const n = kb < 10 ? Math.max(0.1, Math.round(kb * 10) / 10) : Math.round(kb);
    return t('kb', n.toLocaleString(LANG));
  }

  function fmtUptime(sec) {
    sec = Math.max(0, Math.floor(Number(sec) || 0));
    const d = Math.floor(sec / 86400), h = Math.floor(sec / 3600) % 24;
    const m = Math.floor(sec / 60) % 60, s = sec % 60;
    const parts = [];
    if (d) parts.push(t('days', d));
    if (d || h) parts.push(t('hours', h));
    if (!d) parts.push(t('minutes', m));
    if (!d && !h) parts.push(t('seconds', s));
    return parts.join(' ');
  }

  /* "Name <address>", or the address alone. */
  function fmtAddr(a) {
    if (!a) return '';
    if (a.Name && a.Address) return a.Name + ' <' + a.Address + '>';
    return a.Name || a.Address || '';
  }

  function fmtAddrs(list) {
    return (list || []).map(fmtAddr).filter(Boolean).join(', ');
  }

  /* A translated word for a value the server sends (a state, a policy), or the value itself. */
  function word(prefix, value) {
    const key = prefix + String(value || '').toLowerCase();
    return (DICT[LANG][key] !== undefined || DICT.en[key] !== undefined) ? t(key) : String(value || '');
  }

  /* ---------------------------------------------------------------- 3. the API */

  function showError(text) { $('error').textContent = text; }
  function clearError() { $('error').textContent = ''; }

  /* api('GET', '/api/v1/messages'): the parsed JSON (or the text) of the answer. On failure the
   * error is shown in #error and the promise rejects (callers that need not react use quiet()). */
  async function api(method, path, body) {
    const opts = { method, headers: {}, credentials: 'same-origin', cache: 'no-store' };
    if (method !== 'GET') {
      opts.headers['X-Requested-With'] = 'mailsrv';
      opts.headers['Content-Type'] = 'application/json';
      if (body !== undefined) opts.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, opts);
    } catch (e) {
      throw fail(t('netError', e.message || e));
    }
    const text = await res.text().catch(() => '');
    if (res.status === 401) throw fail(t('login'));
    if (!res.ok) throw fail(t('httpError', res.status, text.trim().slice(0, 300) || res.statusText));
    clearError();
    const type = res.headers.get('Content-Type') || '';
    if (!type.includes('json')) return text;
    try {
      return JSON.parse(text);
    } catch (e) {
      throw fail(t('badJson'));
    }
  }

  function fail(message) {
    showError(message);
    const err = new Error(message);
    err.shown = true;
    return err;
  }

  /* For calls whose failure is already shown in #error and needs nothing more. */
  function quiet(promise) {
    return promise.catch((e) => { if (!e || !e.shown) console.error(e); });
  }

  /* ---------------------------------------------------------------- state */

  const PAGE = 50;
  let newSince = 0; // "new" events since the list was last fetched (see loadList)

  const app = {
    me: { User: '', Admin: false, Capture: false, Mailboxes: [] },
    view: '',            // 'list', 'message', 'queue', 'lists' or 'status'
    ready: false,        // has the first view been rendered?
    list: newList(null, null, '#/'),
    msg: null,           // the open message (GET /api/v1/message/ID)
    msgId: '',           // the ID asked for (set before the answer arrives)
    tab: 'text',
    remote: false,       // remote images shown for the open message
    loaded: {},          // tabs fetched on demand for the open message: headers, raw
  };

  /* The list shown (or last shown): its filter, the messages loaded and the selection. */
  function newList(mailbox, query, hash) {
    return {
      key: JSON.stringify([mailbox, query]),
      mailbox, query, hash,
      messages: [],
      total: 0,            // matches in all, not only those loaded
      unread: 0,
      loaded: false,
      loading: false,
      seq: 0,              // loads begun (loadList drops an answer older than the last)
      selected: new Set(), // IDs
      cur: '',             // ID of the current row (j/k)
      rows: new Map(),     // ID -> row element
      scrollY: 0,
    };
  }

  function markReady() {
    if (app.ready) return;
    app.ready = true;
    document.body.dataset.ready = '1';
    try { performance.mark('mailsrv-first-render'); } catch (e) { /* old browser */ }
  }

  function isAdmin() { return !!(app.me.Admin || app.me.Capture); }

  function updateTitle() {
    const n = app.list.unread;
    document.title = n > 0 ? '(' + n + ') mailsrv' : 'mailsrv';
  }

  /* ---------------------------------------------------------------- 4. routing */

  const VIEWS = ['list', 'message', 'queue', 'lists', 'status'];

  function showView(name) {
    if (app.view === 'list' && name !== 'list') app.list.scrollY = window.scrollY;
    if (app.view === 'message' && name !== 'message') leaveMessage();
    app.view = name;
    for (const v of VIEWS) $('view-' + v).hidden = v !== name;
  }

  function route() {
    const hash = location.hash || '#/';
    const path = hash.replace(/^#\/?/, '');
    const slash = path.indexOf('/');
    const kind = slash < 0 ? path : path.slice(0, slash);
    let arg = slash < 0 ? '' : path.slice(slash + 1);
    try { arg = decodeURIComponent(arg); } catch (e) { /* keep it as it is */ }

    $('search').value = kind === 'search' ? arg : '';
    if (kind === 'mailbox' && arg) showList(arg, null, hash);
    else if (kind === 'search' && arg.trim()) showList(null, arg, hash);
    else if (kind === 'message' && arg) showMessage(arg);
    else if (kind === 'queue') showQueue();
    else if (kind === 'lists') showLists();
    else if (kind === 'status') showStatus();
    else showList(null, null, '#/');
    markNav(kind === 'mailbox' ? arg : kind === '' ? '' : null, kind);
  }

  /* aria-current on the nav link of the view shown. */
  function markNav(mailbox, kind) {
    for (const a of $('nav').querySelectorAll('a')) {
      const on = (a.dataset.all !== undefined && mailbox === '') ||
        (a.dataset.mailbox !== undefined && a.dataset.mailbox === mailbox) ||
        (a.id === 'nav-' + kind);
      if (on) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
  }

  function go(hash) {
    if (location.hash === hash) route();
    else location.hash = hash;
  }

  function messageHash(id) { return '#/message/' + enc(id); }

  /* ---------------------------------------------------------------- nav: mailboxes */

  async function loadMailboxes() {
    const me = await api('GET', '/api/v1/mailboxes');
    app.me = {
      User: me.User || '',
      Admin: !!me.Admin,
      Capture: !!me.Capture,
      Mailboxes: Array.isArray(me.Mailboxes) ? me.Mailboxes : [],
    };
    renderNav();
  }

  function renderNav() {
    const me = app.me;
    $('user').textContent = me.User || (me.Capture ? t('captureMode') : '');
    const allLabel = (!me.Capture && me.Mailboxes.length <= 1) ? t('inbox') : t('allMail');
    const items = [el('li', null, el('a', { href: '#/', 'data-all': '' }, el('span', { class: 'name' }, allLabel)))];
    for (const mb of me.Mailboxes) {
      const unread = Number(mb.Unread) || 0, total = Number(mb.Total) || 0;
      items.push(el('li', null,
        el('a', { href: '#/mailbox/' + enc(mb.Address), 'data-mailbox': mb.Address },
          el('span', { class: 'name' }, mb.Address),
          el('span', {
            class: unread ? 'count has-unread' : 'count',
            title: t('mailboxCount', unread, total),
          }, unread ? unread + ' / ' + total : String(total)))));
    }
    fill('mailboxes', items);
    const admin = isAdmin();
    $('nav-admin').hidden = !admin;
    for (const id of ['nav-queue', 'nav-lists', 'nav-status']) $(id).hidden = !admin;
    const h = location.hash.replace(/^#\/?/, '');
    const kind = h.split('/')[0];
    let arg = h.slice(kind.length + 1);
    try { arg = decodeURIComponent(arg); } catch (e) { /* as it is */ }
    markNav(kind === 'mailbox' ? arg : kind === '' ? '' : null, kind);
    if (app.list.key === JSON.stringify([null, null])) $('list-title').textContent = allLabel;
  }

  /* ---------------------------------------------------------------- 5a. the message list */

  function listUrl(start, limit) {
    const L = app.list;
    const p = new URLSearchParams();
    if (L.query !== null) p.set('query', L.query);
    p.set('start', String(start));
    p.set('limit', String(limit));
    if (L.mailbox) p.set('mailbox', L.mailbox);
    return (L.query !== null ? '/api/v1/search?' : '/api/v1/messages?') + p.toString();
  }

  function showList(mailbox, query, hash) {
    const key = JSON.stringify([mailbox, query]);
    showView('list');
    const L0 = app.list;
    if (L0.key !== key) {
      app.list = newList(mailbox, query, hash);
      $('list-title').textContent = query !== null ? t('searchResults', query)
        : mailbox ? mailbox
        : (!app.me.Capture && app.me.Mailboxes.length <= 1) ? t('inbox') : t('allMail');
      renderList();
      quiet(loadList(false));
    } else {
      app.list.hash = hash;
      renderList();
      window.scrollTo(0, app.list.scrollY);
      const row = app.list.rows.get(app.list.cur);
      if (row) row.scrollIntoView({ block: 'nearest' });
      quiet(loadList(false)); // the same list again: show it at once, then bring it up to date
    }
  }

  /* Fetches the first page (or, on refresh, as many as are loaded), or with more the next page.
   * Each load has a number: an answer that comes after a newer load began is dropped, so a slow
   * refresh cannot overwrite a "Load more" or a later refresh. */
  async function loadList(more) {
    const L = app.list;
    const seq = ++L.seq;
    const start = more ? L.messages.length : 0;
    // a refresh asks for as many as are shown, plus those that arrived since (so none drop off),
    // in pages of at most 1,000 (the API's limit)
    let want = more ? PAGE : Math.max(PAGE, L.messages.length + newSince);
    if (!more) newSince = 0;
    L.loading = true;
    updateMore();
    let r, got = [];
    try {
      for (let at = start; want > 0; ) {
        const n = Math.min(1000, want);
        r = await api('GET', listUrl(at, n));
        const page = Array.isArray(r.messages) ? r.messages : [];
        got = got.concat(page);
        if (page.length < n) break;
        at += n;
        want -= n;
      }
    } finally {
      if (L.seq === seq) L.loading = false;
      if (app.list === L) updateMore();
    }
    if (app.list !== L || L.seq !== seq) return; // another list was opened, or a newer load began
    if (more) {
      const have = new Set(L.messages.map((m) => m.ID));
      for (const m of got) if (!have.has(m.ID)) L.messages.push(m);
    } else {
      L.messages = got;
    }
    L.total = Number(r.messages_count !== undefined ? r.messages_count : r.total) || 0;
    L.unread = Number(r.messages_unread !== undefined ? r.messages_unread : r.unread) || 0;
    L.loaded = true;
    const ids = new Set(L.messages.map((m) => m.ID));
    for (const id of L.selected) if (!ids.has(id)) L.selected.delete(id);
    const y = window.scrollY;
    renderList();
    if (app.view === 'list') window.scrollTo(0, y);
    markReady();
  }

  function renderList() {
    const L = app.list;
    L.rows = new Map();
    const rows = L.messages.map((m) => {
      const row = renderRow(m);
      L.rows.set(m.ID, row);
      return row;
    });
    fill('list', rows);
    $('empty').hidden = !(L.loaded && L.messages.length === 0);
    $('list-count').textContent = L.loaded && L.total
      ? t('countOf', L.messages.length.toLocaleString(LANG), L.total.toLocaleString(LANG)) : '';
    updateMore();
    updateToolbar();
    updateTitle();
    highlight(false);
  }

  function renderRow(m) {
    const L = app.list;
    const subject = m.Subject || t('noSubject');
    const from = m.From ? (m.From.Name || m.From.Address || '') : '';
    const box = el('input', {
      type: 'checkbox',
      'aria-label': t('selectMessage', subject),
      checked: L.selected.has(m.ID),
    });
    box.addEventListener('change', () => {
      if (box.checked) L.selected.add(m.ID); else L.selected.delete(m.ID);
      updateToolbar();
    });
    return el('div', {
      class: m.Read ? 'msg' : 'msg unread',
      'data-id': m.ID,
      role: 'row',
      'aria-selected': 'false',
    },
    el('div', { class: 'sel', role: 'gridcell' }, box),
    el('div', { class: 'mark', role: 'gridcell' },
      m.Read ? null : [el('span', { 'aria-hidden': 'true' }, '●'), el('span', { class: 'vh' }, t('unread'))]),
    el('div', { class: 'from', role: 'gridcell', title: m.From ? m.From.Address || '' : '' }, from),
    el('div', { class: 'subject', role: 'gridcell' }, el('a', { href: messageHash(m.ID) }, subject)),
    el('div', { class: 'snippet', role: 'gridcell' }, m.Snippet || ''),
    el('div', { class: 'attcell', role: 'gridcell' },
      m.Attachments > 0 ? el('span', { class: 'att', role: 'img', 'aria-label': t('hasAttachments'), title: t('hasAttachments') }) : null),
    el('div', { class: 'date', role: 'gridcell' }, el('time', { datetime: m.Created || '' }, fmtDate(m.Created))),
    el('div', { class: 'size', role: 'gridcell' }, fmtSize(m.Size)));
  }

  function hasMore() { return app.list.loaded && app.list.messages.length < app.list.total; }

  function updateMore() {
    const b = $('btn-more');
    b.hidden = !hasMore();
    b.disabled = app.list.loading;
  }

  function updateToolbar() {
    const L = app.list;
    const n = L.selected.size;
    for (const id of ['btn-read-selected', 'btn-unread-selected', 'btn-delete-selected']) $(id).disabled = n === 0;
    $('btn-delete-all').disabled = !L.loaded || L.total === 0;
    const all = $('sel-all');
    all.checked = n > 0 && n === L.messages.length;
    all.indeterminate = n > 0 && n < L.messages.length;
    for (const [id, row] of L.rows) {
      const on = L.selected.has(id);
      row.classList.toggle('selected', on);
      row.querySelector('input').checked = on;
    }
  }

  /* Marks the current row (class "current", aria-selected); scroll brings it into view. */
  function highlight(scroll) {
    const L = app.list;
    for (const [id, row] of L.rows) {
      const on = id === L.cur;
      row.classList.toggle('current', on);
      row.setAttribute('aria-selected', on ? 'true' : 'false');
      if (on && scroll) row.scrollIntoView({ block: 'nearest' });
    }
  }

  /* Read or unread in the list's copy, the row, the unread count and the title. */
  function setReadLocal(id, read) {
    const L = app.list;
    const m = L.messages.find((x) => x.ID === id);
    if (m && !!m.Read !== read) {
      m.Read = read;
      L.unread = Math.max(0, L.unread + (read ? -1 : 1));
      const old = L.rows.get(id);
      if (old) {
        const row = renderRow(m);
        old.replaceWith(row);
        L.rows.set(id, row);
        highlight(false);
        updateToolbar();
      }
    }
    if (app.msg && app.msg.ID === id) app.msg.Read = read;
    updateTitle();
  }

  /* Drops messages from the list's copy (deleted here or by someone else), then draws the list
   * once (a render per message made deleting 1,000 selected ones take minutes). */
  function removeLocal(ids) {
    const L = app.list;
    const gone = new Set(ids);
    const i = L.messages.findIndex((m) => gone.has(m.ID));
    if (i < 0) return;
    if (gone.has(L.cur)) {
      const next = L.messages.slice(L.messages.findIndex((m) => m.ID === L.cur)).find((m) => !gone.has(m.ID)) ||
        L.messages.slice(0, i).reverse().find((m) => !gone.has(m.ID));
      L.cur = next ? next.ID : '';
    }
    const kept = [];
    for (const m of L.messages) {
      if (!gone.has(m.ID)) { kept.push(m); continue; }
      if (!m.Read) L.unread = Math.max(0, L.unread - 1);
      L.total = Math.max(0, L.total - 1);
      L.selected.delete(m.ID);
    }
    L.messages = kept;
    renderList();
  }

  /* The message after id in the list (or before it, at the end). */
  function neighbour(id) {
    const list = app.list.messages;
    const i = list.findIndex((m) => m.ID === id);
    if (i < 0) return '';
    return (list[i + 1] || list[i - 1] || {}).ID || '';
  }

  async function bulk(action) {
    const L = app.list;
    const ids = [...L.selected];
    if (!ids.length) return;
    if (action === 'delete') {
      await api('DELETE', '/api/v1/messages', { IDs: ids });
      removeLocal(ids);
      quiet(loadList(false));
    } else {
      const read = action === 'read';
      await api('PUT', '/api/v1/messages', { IDs: ids, Read: read });
      for (const id of ids) setReadLocal(id, read);
    }
    L.selected.clear();
    updateToolbar();
    refreshNavSoon();
  }

  async function deleteAll() {
    const L = app.list;
    if (!confirm(t('confirmDeleteAll', L.total.toLocaleString(LANG)))) return;
    // what the list shows: a search's matches or all messages, of one mailbox (?mailbox=) or all
    const p = new URLSearchParams();
    if (L.query !== null) p.set('query', L.query);
    if (L.mailbox) p.set('mailbox', L.mailbox);
    await api('DELETE', (L.query !== null ? '/api/v1/search?' : '/api/v1/messages?') + p.toString(),
      L.query !== null ? undefined : {});
    L.selected.clear();
    L.cur = '';
    await loadList(false);
    refreshNavSoon();
  }

  /* ---------------------------------------------------------------- 5b. one message */

  const frame = () => $('msg-html');

  function leaveMessage() {
    frame().src = 'about:blank';
    app.msg = null;
    app.msgId = '';
  }

  /* The list is needed for j/k and "delete, then the next one" even on a direct link. */
  function ensureList() {
    if (!app.list.loaded && !app.list.loading) quiet(loadList(false));
  }

  async function showMessage(id) {
    showView('message');
    window.scrollTo(0, 0);
    ensureList();
    app.msgId = id;
    app.msg = null;
    app.list.cur = id;
    highlight(false);
    app.remote = false;
    app.loaded = {};
    $('msg-subject').textContent = t('loading');
    for (const f of ['msg-from', 'msg-to', 'msg-cc', 'msg-date', 'msg-text', 'msg-raw', 'msg-status'])
      $(f).textContent = '';
    fill('msg-headers');
    fill('msg-attachments');
    $('msg-attachments-box').hidden = true;
    frame().src = 'about:blank';

    const m = await api('GET', '/api/v1/message/' + enc(id)).catch(() => null);
    if (app.msgId !== id || app.view !== 'message') return; // the user went elsewhere meanwhile
    if (!m) { $('msg-subject').textContent = ''; markReady(); return; }
    app.msg = m;
    renderMessage(m);
    markReady();
    if (!m.Read) {
      quiet(api('PUT', '/api/v1/messages', { IDs: [id], Read: true }).then(() => {
        setReadLocal(id, true);
        refreshNavSoon();
      }));
    }
  }

  function renderMessage(m) {
    $('msg-subject').textContent = m.Subject || t('noSubject');
    $('msg-from').textContent = fmtAddr(m.From);
    $('msg-to').textContent = fmtAddrs(m.To);
    const cc = fmtAddrs(m.Cc);
    $('msg-cc').textContent = cc;
    $('msg-cc').hidden = $('msg-cc-label').hidden = !cc;
    $('msg-date').textContent = fmtDate(m.Date || m.Created, true);
    $('msg-text').textContent = m.Text || t('noText');

    const atts = Array.isArray(m.Attachments) ? m.Attachments : [];
    fill('msg-attachments', atts.map((a) => {
      const name = a.FileName || t('attachment', a.PartID);
      return el('li', null,
        el('a', {
          href: '/api/v1/message/' + enc(m.ID) + '/part/' + enc(a.PartID),
          download: name,
        }, name),
        el('span', { class: 'size' }, fmtSize(a.Size)));
    }));
    $('msg-attachments-box').hidden = atts.length === 0;

    const hasHtml = !!(m.HTML && String(m.HTML).trim());
    $('tab-html').hidden = !hasHtml;
    $('btn-remote').disabled = false;
    selectTab(hasHtml ? 'html' : 'text');
  }

  function htmlUrl() {
    return '/view/' + enc(app.msgId) + '.html' + (app.remote ? '?remote=1' : '');
  }

  function selectTab(name) {
    app.tab = name;
    for (const b of document.querySelectorAll('[data-tab]')) {
      const on = b.dataset.tab === name;
      b.setAttribute('aria-selected', on ? 'true' : 'false');
      b.tabIndex = on ? 0 : -1;
    }
    for (const p of ['html', 'text', 'headers', 'raw']) $('panel-' + p).hidden = p !== name;
    const id = app.msgId;
    if (!id) return;
    if (name === 'html') {
      const url = htmlUrl();
      if (frame().getAttribute('src') !== url) frame().src = url;
      else fitFrame();
    } else if (name === 'headers' && !app.loaded.headers) {
      app.loaded.headers = true;
      api('GET', '/api/v1/message/' + enc(id) + '/headers').then((h) => {
        if (app.msgId === id) renderHeaders(h);
      }).catch(() => { app.loaded.headers = false; });
    } else if (name === 'raw' && !app.loaded.raw) {
      app.loaded.raw = true;
      $('msg-raw').textContent = t('loading');
      api('GET', '/api/v1/message/' + enc(id) + '/raw').then((text) => {
        if (app.msgId === id) $('msg-raw').textContent = typeof text === 'string' ? text : JSON.stringify(text);
      }).catch(() => { app.loaded.raw = false; $('msg-raw').textContent = ''; });
    }
  }

  function renderHeaders(h) {
    const rows = [];
    for (const [name, values] of Object.entries(h || {})) {
      for (const v of (Array.isArray(values) ? values : [values]))
        rows.push(el('tr', null, el('th', { scope: 'row' }, name), el('td', null, String(v))));
    }
    fill('msg-headers', el('tbody', null, rows));
  }

  /* The iframe as tall as its document (allow-same-origin lets us read it; scripts stay off). */
  function fitFrame() {
    try {
      const doc = frame().contentDocument;
      if (!doc || !doc.documentElement || $('panel-html').hidden) return;
      const h = Math.max(doc.documentElement.scrollHeight, doc.body ? doc.body.scrollHeight : 0);
      frame().style.height = Math.max(60, Math.min(h + 20, 100000)) + 'px';
    } catch (e) {
      /* not readable: keep the height from the style sheet */
    }
  }

  async function deleteOpen() {
    const id = app.msgId;
    if (!id) return;
    const next = neighbour(id);
    await api('DELETE', '/api/v1/messages', { IDs: [id] });
    removeLocal([id]);
    refreshNavSoon();
    if (next) location.replace(messageHash(next));
    else go(app.list.hash);
  }

  async function markUnreadOpen() {
    const id = app.msgId;
    if (!id) return;
    await api('PUT', '/api/v1/messages', { IDs: [id], Read: false });
    setReadLocal(id, false);
    $('msg-status').textContent = t('markedUnread');
    refreshNavSoon();
  }

  async function release(ev) {
    ev.preventDefault();
    const id = app.msgId;
    const input = $('release-to');
    const to = input.value.trim();
    if (!id || !to) return;
    const button = $('release-form').querySelector('button');
    button.disabled = true;
    $('msg-status').textContent = t('forwarding');
    try {
      await api('POST', '/api/v1/message/' + enc(id) + '/release', { To: [to] });
      $('msg-status').textContent = t('forwarded', to);
      input.value = '';
    } catch (e) {
      $('msg-status').textContent = e.message;
    } finally {
      button.disabled = false;
    }
  }

  /* ---------------------------------------------------------------- 5c. admin pages */

  /* A table: head is a list of column titles; rows a list of lists of cells (strings or nodes).
   * On phones the cells stack, each labelled with its column title (class "stack"). */
  function table(head, rows, extra) {
    return el('div', { class: 'table-wrap' },
      el('table', { class: 'table stack' + (extra ? ' ' + extra : '') },
        el('thead', null, el('tr', null, head.map((h) => el('th', { scope: 'col' }, h)))),
        el('tbody', null, rows.map((cells) => {
          const tr = el('tr', cells.rowClass ? { class: cells.rowClass } : null);
          cells.forEach((c, i) => tr.appendChild(
            el('td', { 'data-label': head[i], class: cells.numeric && cells.numeric.includes(i) ? 'num' : null }, c)));
          return tr;
        }))));
  }

  /* No event announces the end of a relay attempt: while one is going on, the view looks again
   * each second, so "being relayed now" does not stay on the screen after it is over. */
  let queueTimer = 0;
  const QUEUE_SHOWN = 100; // the first ones of the queue; the rest counted below them

  async function showQueue() {
    clearTimeout(queueTimer);
    showView('queue');
    const r = await api('GET', '/api/v1/queue?limit=' + QUEUE_SHOWN).catch(() => null);
    markReady();
    if (!r || app.view !== 'queue') return;
    const entries = Array.isArray(r.Entries) ? r.Entries : [];
    if (!entries.length) { fill('queue-body', el('p', { class: 'empty' }, t('queueEmpty'))); return; }
    const rows = entries.map((q) => {
      const rcpts = el('ul', { class: 'rcpts' }, (q.Recipients || []).map((rc) =>
        el('li', null,
          rc.Address || '', ' ',
          el('span', { class: 'state-' + String(rc.State || '').toLowerCase().replace(/[^a-z]/g, '') },
            '(' + word('st_', rc.State) + ')'),
          rc.Error ? el('div', { class: 'small' }, rc.Error) : null)));
      const cells = [
        el('code', null, q.ID || ''),
        q.From || '<>',
        fmtDate(q.Arrived, true),
        fmtSize(q.Size),
        String(q.Tries || 0),
        [Date.parse(q.NextTry) <= Date.now() ? t('qNow') : fmtDate(q.NextTry, true),
          q.Active ? el('div', { class: 'small' }, t('qActive')) : null],
        rcpts,
        el('button', { type: 'button', class: 'q-delete danger', 'data-id': q.ID || '' }, t('removeFromQueue')),
      ];
      cells.numeric = [3, 4];
      if (q.Active) cells.rowClass = 'active';
      return cells;
    });
    const more = (r.Total || 0) - entries.length;
    fill('queue-body', table([t('qId'), t('qFrom'), t('qArrived'), t('qSize'), t('qTries'), t('qNext'),
      t('qRcpts'), t('qActions')], rows), more > 0 ? el('p', { class: 'small' }, t('queueMore', more)) : null);
    if (entries.some((q) => q.Active))
      queueTimer = setTimeout(() => { if (app.view === 'queue') quiet(showQueue()); }, 1000);
  }

  async function deleteQueued(id) {
    if (!confirm(t('confirmQueueDelete', id))) return;
    await api('DELETE', '/api/v1/queue/' + enc(id));
    await showQueue();
  }

  async function flushQueue() {
    const r = await api('POST', '/api/v1/queue/flush');
    $('queue-status').textContent = t('flushed', r && r.Flushed !== undefined ? r.Flushed : 0);
    await showQueue();
  }

  /* "time, IP, message id" of a subscription step, one per line. */
  function step(s) {
    if (!s || !s.Time) return t('none');
    return [fmtDate(s.Time, true), s.IP ? el('div', { class: 'small' }, s.IP) : null,
      s.MessageID ? el('div', { class: 'small' }, s.MessageID) : null];
  }

  async function showLists() {
    showView('lists');
    const r = await api('GET', '/api/v1/lists').catch(() => null);
    markReady();
    if (!r || app.view !== 'lists') return;
    const lists = Array.isArray(r.Lists) ? r.Lists : [];
    if (!lists.length) { fill('lists-body', el('p', { class: 'empty' }, t('listsEmpty'))); return; }
    fill('lists-body', lists.map((l) => {
      const members = Array.isArray(l.Members) ? l.Members : [];
      const pending = Array.isArray(l.Pending) ? l.Pending : [];
      return el('section', { class: 'card list-card' },
        el('h3', null, l.Address || ''),
        el('dl', { class: 'facts' },
          el('dt', null, t('owner')), el('dd', null, l.Owner || t('none')),
          el('dt', null, t('post')), el('dd', null, word('post_', l.Post)),
          el('dt', null, t('posts')), el('dd', null, String(l.Posts || 0))),
        el('h4', null, t('members', members.length)),
        members.length
          ? table([t('address'), t('requested'), t('confirmed'), t('bounces')],
            members.map((mb) => {
              const cells = [mb.Address || '', step(mb.Requested), step(mb.Confirmed), String(mb.Bounces || 0)];
              cells.numeric = [3];
              return cells;
            }), 'members')
          : el('p', { class: 'muted' }, t('noMembers')),
        el('h4', null, t('pending', pending.length)),
        pending.length
          ? table([t('address'), t('request'), t('time'), 'IP'],
            pending.map((p) => [p.Address || '', word('kind_', p.Kind), fmtDate(p.Time, true), p.IP || '']), 'pending')
          : el('p', { class: 'muted' }, t('noPending')));
    }));
  }

  async function showStatus() {
    showView('status');
    const s = await api('GET', '/api/v1/status').catch(() => null);
    markReady();
    if (!s || app.view !== 'status') return;
    const sessions = Object.entries(s.Sessions || {}).map(([p, n]) => p + ': ' + n).join(', ');
    const listeners = Array.isArray(s.Listeners) ? s.Listeners : [];
    fill('status-body',
      el('dl', { class: 'facts' },
        el('dt', null, t('version')), el('dd', null, s.Version || ''),
        el('dt', null, t('uptime')), el('dd', null, fmtUptime(s.Uptime)),
        el('dt', null, t('sessions')), el('dd', null, sessions || '0'),
        el('dt', null, t('messagesToday')), el('dd', null, String(s.MessagesToday || 0)),
        el('dt', null, t('queueLength')), el('dd', null, String(s.Queue || 0))),
      el('h3', null, t('listeners')),
      table([t('protocol'), t('address'), t('tls')],
        listeners.map((l) => [l.Protocol || '', l.Address || '', word('tls_', l.TLS)]), 'listeners'));
  }

  /* ---------------------------------------------------------------- 6. live updates */

  let refreshTimer = 0;
  let navTimer = 0;

  /* Many events in a row (a burst of mail) make one refresh, 300 ms after the first: a timer
   * that each event restarted would never fire while mail keeps coming. */
  function refreshSoon() {
    if (refreshTimer) return;
    refreshTimer = setTimeout(() => {
      refreshTimer = 0;
      quiet(loadMailboxes());
      if (app.list.loaded) quiet(loadList(false));
      if (app.view === 'queue') quiet(showQueue());
      if (app.view === 'status') quiet(showStatus());
    }, 300);
  }

  function refreshNavSoon() {
    clearTimeout(navTimer);
    navTimer = setTimeout(() => quiet(loadMailboxes()), 300);
  }

  function onEvent(ev) {
    let data = null;
    try { data = JSON.parse(ev.data); } catch (e) { return; }
    const d = (data && data.Data) || {};
    if (ev.type === 'delete' && d.ID) removeLocal([String(d.ID)]);
    if (ev.type === 'new') newSince++;
    refreshSoon();
  }

  let reconnected = false;

  function connectEvents() {
    if (!window.EventSource) return;
    const es = new EventSource('/api/v1/events');
    es.addEventListener('new', onEvent);
    es.addEventListener('delete', onEvent);
    es.onerror = () => {
      es.close();
      setTimeout(() => { connectEvents(); reconnected = true; }, 5000);
    };
    es.onopen = () => { // what came while the stream was down was not announced
      if (reconnected) refreshSoon();
    };
  }

  /* ---------------------------------------------------------------- keyboard */

  function moveBy(step) {
    const L = app.list;
    const list = L.messages;
    if (!list.length) return;
    let i = list.findIndex((m) => m.ID === (app.view === 'message' ? app.msgId : L.cur));
    if (app.view === 'message') {
      const next = i < 0 ? null : list[i + step];
      if (next) location.replace(messageHash(next.ID));
      return;
    }
    i = i < 0 ? 0 : Math.max(0, Math.min(list.length - 1, i + step));
    L.cur = list[i].ID;
    highlight(true);
    if (i === list.length - 1 && step > 0 && hasMore() && !L.loading) quiet(loadList(true));
  }

  function onKey(e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const tg = e.target;
    if (tg && (tg.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(tg.tagName))) {
      if (e.key === 'Escape' && tg.id === 'search') tg.blur();
      return;
    }
    const inList = app.view === 'list', inMsg = app.view === 'message';
    const cur = inMsg ? app.msgId : app.list.cur;
    // letters by their place on the keyboard (e.code), so that j, k and u work in a Russian layout too
    const key = { KeyJ: 'j', KeyK: 'k', KeyU: 'u', Slash: '/' }[e.code] || e.key;
    switch (key) {
      case 'j': if (!inList && !inMsg) return; moveBy(1); break;
      case 'k': if (!inList && !inMsg) return; moveBy(-1); break;
      case 'Enter':
        if (!inList || !cur || /^(BUTTON|A)$/.test(tg.tagName)) return;
        go(messageHash(cur));
        break;
      case 'Delete':
      case '#':
        if (inMsg) quiet(deleteOpen());
        else if (inList && cur) {
          quiet(api('DELETE', '/api/v1/messages', { IDs: [cur] }).then(() => {
            removeLocal([cur]);
            highlight(true);
            refreshNavSoon();
          }));
        } else return;
        break;
      case '/': $('search').focus(); $('search').select(); break;
      case 'Escape': if (!inMsg) return; go(app.list.hash); break;
      case 'u':
        if (inMsg) quiet(markUnreadOpen());
        else if (inList && cur) {
          quiet(api('PUT', '/api/v1/messages', { IDs: [cur], Read: false }).then(() => {
            setReadLocal(cur, false);
            refreshNavSoon();
          }));
        } else return;
        break;
      default: return;
    }
    e.preventDefault();
  }

  /* ---------------------------------------------------------------- start */

  /* Static text in index.html is English; data-i18n* attributes name the strings to put there. */
  function translatePage() {
    document.documentElement.lang = LANG;
    for (const n of document.querySelectorAll('[data-i18n]')) n.textContent = t(n.dataset.i18n);
    for (const n of document.querySelectorAll('[data-i18n-ph]')) n.placeholder = t(n.dataset.i18nPh);
    for (const n of document.querySelectorAll('[data-i18n-aria]')) n.setAttribute('aria-label', t(n.dataset.i18nAria));
    for (const n of document.querySelectorAll('[data-i18n-title]')) n.title = t(n.dataset.i18nTitle);
  }

  function wire() {
    $('search-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const q = $('search').value.trim();
      go(q ? '#/search/' + enc(q) : '#/');
    });

    // the list: a click anywhere on a row opens it (the checkbox and the link do their own thing)
    $('list').addEventListener('click', (e) => {
      const row = e.target.closest('.msg');
      if (!row || e.target.closest('input, a, label')) return;
      go(messageHash(row.dataset.id));
    });
    $('sel-all').addEventListener('change', (e) => {
      const L = app.list;
      if (e.target.checked) for (const m of L.messages) L.selected.add(m.ID);
      else L.selected.clear();
      updateToolbar();
    });
    $('btn-read-selected').addEventListener('click', () => quiet(bulk('read')));
    $('btn-unread-selected').addEventListener('click', () => quiet(bulk('unread')));
    $('btn-delete-selected').addEventListener('click', () => quiet(bulk('delete')));
    $('btn-delete-all').addEventListener('click', () => quiet(deleteAll()));
    $('btn-more').addEventListener('click', () => quiet(loadList(true)));

    // one message
    $('btn-back').addEventListener('click', () => go(app.list.hash));
    $('btn-delete').addEventListener('click', () => quiet(deleteOpen()));
    $('btn-unread').addEventListener('click', () => quiet(markUnreadOpen()));
    $('btn-remote').addEventListener('click', () => {
      app.remote = true;
      $('btn-remote').disabled = true;
      selectTab('html');
    });
    for (const b of document.querySelectorAll('[data-tab]'))
      b.addEventListener('click', () => selectTab(b.dataset.tab));
    $('release-form').addEventListener('submit', release);
    frame().addEventListener('load', fitFrame);
    window.addEventListener('resize', () => { if (app.view === 'message' && app.tab === 'html') fitFrame(); });

    // admin
    $('btn-flush').addEventListener('click', () => quiet(flushQueue()));
    $('queue-body').addEventListener('click', (e) => {
      const b = e.target.closest('.q-delete');
      if (b) quiet(deleteQueued(b.dataset.id));
    });

    document.addEventListener('keydown', onKey);
    window.addEventListener('hashchange', route);
  }

  async function start() {
    translatePage();
    wire();
    // the mailboxes (which views to offer) and the first list are asked for at once: each takes the
    // server a pass over the store, and the list need not wait for the nav
    renderNav();
    const nav = quiet(loadMailboxes());
    route();
    connectEvents();
    await nav;
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
