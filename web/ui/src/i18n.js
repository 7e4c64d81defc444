// Interface text in Chinese (default) and English; the choice is kept in localStorage.
const zh = {
  title: '监督 · 指挥台', login: '登录', logout: '退出', name: '用户名', password: '密码',
  wrong_login: '用户名或密码错误', rate_limited: '失败次数过多，请稍后再试', map: '实时地图', reports: '线索与派遣',
  lookup: '查询', audit: '审计', admin: '管理', api: '接口文档', forbidden: '您的角色无权访问此页面',
  available: '空闲', busy: '执勤中', off_duty: '下班', offline: '离线', stale: '失联', unknown: '未上报', revoked: '已注销',
  devices: '设备', shown: '显示', track_today: '今日轨迹', last_seen: '最后上报', staff: '人员编号', battery: '电量',
  speed: '速度', state: '状态', close: '关闭', all: '全部', new: '新线索', dispatching: '已派发', unassigned: '无人接单（已上报）',
  assigned: '处置中', completed: '已完成', cancelled: '已撤销', kind: '类别', text: '内容', lat: '纬度', lon: '经度',
  plate: '车牌', create_report: '新建线索', submit: '提交', time: '时间', status: '状态', origin: '来源', more: '更多',
  report: '线索', dispatch_nearest: '派最近的人', dispatch_to: '派给', cancel_report: '撤销线索', reassign: '改派',
  assignments: '派遣记录', timeline: '时间线', evidence: '证据', nearest_available: '最近的空闲人员', distance: '距离',
  device: '设备', actor: '操作人', note: '备注', hash: '哈希', receipt: '回执', custody: '保管链', size: '大小',
  no_evidence: '暂无证据', vehicle: '车辆', person: '人员', department: '部门', query: '查询内容', at: '时间点', search: '查询',
  found: '找到', not_found: '未找到', candidates: '候选', lookups: '查询审计', ledger: '账本', users: '用户',
  add_user: '添加用户', role: '角色', add_device: '添加设备', credentials_once: '凭据仅显示一次，请用手机扫描二维码', open_field_app: '在本机打开现场应用',
  revoke: '注销', disable: '停用', enable: '启用', disabled: '已停用', active: '正常', integrations: '对接系统',
  subscribe: '订阅', publish: '发布', confirm: '确定？', live: '实时', disconnected: '连接中断，正在重连…', loading: '加载中…', none: '无',
  dispatcher: '值班员', leader: '领导', auditor: '审计员', created: '创建时间', seq: '序号', subject: '对象',
  outcome: '结果', channel: '渠道', paths: '接口', method: '方法', description: '说明', extent: '数据范围',
  public_tip: '群众举报', place: '地点', tip_count: '举报次数', contact: '联系方式', contact_on_file: '已留联系方式（仅领导可见）',
  no_contact: '未留联系方式', show_contact: '查看联系方式（将记入审计）', feedback: '给举报人的反馈', feedback_new: '写反馈',
  feedback_on_close: '关闭前，请写给举报人的反馈（举报人凭查询码可见）：',
  no_location: '无位置', place_it: '设置位置', set_location: '确定位置',
  place_hint: '举报人只描述了地点：在地图上点击选点，或输入经纬度，确定后自动派发最近的监督员。',
  lang: 'English', error: '错误', offered: '已派发', accepted: '已接受', declined: '已拒绝', arrived: '已到达',
  expired: '已超时', needs: '所需人数',
  cases: '案件', approvals: '待我审批', index: '廉洁指数', unit: '单位', unit_not_registered: '单位须为部门名录中的代码', overdue: '已超期', overdue_only: '仅看超期',
  filter: '筛选', stage: '阶段', deadline: '期限', remaining: '剩余', wd_left: '剩余 {n} 个工作日',
  wd_over: '超期 {n} 个工作日', wd_unknown: '缺少工作日历', time_left: '距截止 {d} 天 {h} 小时 {m} 分',
  handler: '承办人', unit_head: '单位负责人', parties: '涉及人员', case_title: '标题', new_case: '新建案件',
  open: '办理中', closed: '已办结', advance: '提请审批', approve: '批准', extend: '申请延期', days: '天数', reason: '理由',
  approvals_n: '审批 {a}/{n}', awaiting_approval: '待审批', in_progress: '办理中', stages: '办理阶段',
  approval_log: '审批记录', approver: '审批人', timers: '提醒与告警', pending: '待触发', fired: '已触发',
  negative_records: '负面记录', overview: '各单位在办案件', open_count: '在办', overdue_count: '超期',
  working: '个工作日', calendar: '个自然日', extensions: '延期次数', no_approvals: '暂无待您审批的案件',
  log_opened: '立案登记', log_submitted: '提请审批', log_approved: '批准', log_advanced: '进入下一阶段',
  log_extended: '延期', log_closed: '办结', log_overdue: '超期告警', log_reminder: '期限提醒',
  case: '案件', comma_hint: '多个用逗号分隔', subject_kind: '对象类别', period: '周期', prev: '上一期', next: '下一期',
  show: '查看', recompute: '重新计算', assessment_csv: '年度考核表（CSV）', assessment_html: '年度考核表（打印版）',
  green: '绿', blue: '蓝', yellow: '黄', orange: '橙', red: '红', score: '得分', not_computed: '该周期尚未计算',
  trend: '趋势', explanation: '说明', terms: '扣分项', indicator: '指标', raw: '原始值', value: '计量值', points: '扣分',
  records_behind: '依据记录', alerts: '预警与告警', warning: '预警', alarm: '告警', rectification: '整改案件',
  history: '计算历史', formula_version: '公式版本', unit_size: '单位人数', computed_at: '计算时间',
  size_default: '（登记人数为零，按缺省人数计）', src_reports: '线索', src_cases: '案件', src_disciplined: '处分',
  src_overdue_alarms: '超期告警', src_negative_records: '负面记录', src_indicators: '导入指标', computed: '已计算 {n} 个单位',
  back: '返回', stage_now: '当前阶段', approved_by_me: '您已批准', wd_before: '截止前 {n} 个工作日',
};
const en = {
  title: 'Jiandu · Desk', login: 'Log in', logout: 'Log out', name: 'Name', password: 'Password',
  wrong_login: 'Wrong name or password', rate_limited: 'Too many failed logins; try again later', map: 'Live map',
  reports: 'Reports & dispatch', lookup: 'Look-up', audit: 'Audit', admin: 'Admin', api: 'API',
  forbidden: 'Your role may not open this page', available: 'Available', busy: 'Busy', off_duty: 'Off duty',
  offline: 'Offline', stale: 'Stale', unknown: 'Never reported', revoked: 'Revoked', devices: 'Devices',
  shown: 'shown', track_today: "Today's track", last_seen: 'Last seen', staff: 'Staff id', battery: 'Battery',
  speed: 'Speed', state: 'State', close: 'Close', all: 'All', new: 'New', dispatching: 'Offered',
  unassigned: 'Unassigned (escalated)', assigned: 'In progress', completed: 'Done', cancelled: 'Cancelled', kind: 'Kind',
  text: 'Text', lat: 'Latitude', lon: 'Longitude', plate: 'Plate', create_report: 'New report', submit: 'Submit',
  time: 'Time', status: 'Status', origin: 'Origin', more: 'More', report: 'Report', dispatch_nearest: 'Dispatch nearest',
  dispatch_to: 'Send', cancel_report: 'Cancel report', reassign: 'Reassign', assignments: 'Assignments',
  timeline: 'Timeline', evidence: 'Evidence', nearest_available: 'Nearest available', distance: 'Distance',
  device: 'Device', actor: 'Actor', note: 'Note', hash: 'Hash', receipt: 'Receipt', custody: 'Chain of custody',
  size: 'Size', no_evidence: 'No evidence yet', vehicle: 'Vehicle', person: 'Person', department: 'Department',
  query: 'Query', at: 'At', search: 'Search', found: 'Found', not_found: 'Not found', candidates: 'Candidates',
  lookups: 'Look-up audit', ledger: 'Ledger', users: 'Users', add_user: 'Add user', role: 'Role',
  add_device: 'Add device', credentials_once: 'Shown once: scan the QR code with the phone now', open_field_app: 'Open the field app here', revoke: 'Revoke',
  disable: 'Disable', enable: 'Enable', disabled: 'Disabled', active: 'Active', integrations: 'Integrations',
  subscribe: 'Subscribe', publish: 'Publish',
  confirm: 'Are you sure?', live: 'Live', disconnected: 'Disconnected, reconnecting…', loading: 'Loading…', none: 'None',
  dispatcher: 'Dispatcher', leader: 'Leader', auditor: 'Auditor', created: 'Created', seq: 'Seq', subject: 'Subject',
  outcome: 'Outcome', channel: 'Channel', paths: 'Endpoints', method: 'Method', description: 'Description',
  public_tip: 'Tip from the public', place: 'Place', tip_count: 'Reports', contact: 'Contact',
  contact_on_file: 'Contact on file (leaders only)', no_contact: 'No contact given',
  show_contact: 'Show contact (audited)', feedback: 'Feedback to the reporter', feedback_new: 'Write feedback',
  feedback_on_close: 'Before closing: what should the reporter read with their code?',
  no_location: 'No location', place_it: 'Set the location', set_location: 'Set location',
  place_hint: 'The reporter described the place in words: click the map or enter latitude and longitude; the nearest inspector is then sent.',
  extent: 'Data extent', lang: '中文', error: 'Error', offered: 'Offered', accepted: 'Accepted', declined: 'Declined',
  arrived: 'Arrived', expired: 'Expired', needs: 'Inspectors needed',
  cases: 'Cases', approvals: 'My approvals', index: 'Integrity index', unit: 'Unit', unit_not_registered: 'Choose a unit code from the departments registry', overdue: 'Overdue',
  overdue_only: 'Overdue only', filter: 'Filter', stage: 'Stage', deadline: 'Deadline', remaining: 'Remaining',
  wd_left: '{n} working days left', wd_over: '{n} working days overdue', wd_unknown: 'no working-day calendar',
  time_left: '{d} d {h} h {m} min to the deadline', handler: 'Handler', unit_head: 'Unit head', parties: 'Parties',
  case_title: 'Title', new_case: 'New case', open: 'Open', closed: 'Closed', advance: 'Submit for approval',
  approve: 'Approve', extend: 'Extend', days: 'Days', reason: 'Reason', approvals_n: 'Approvals {a}/{n}',
  awaiting_approval: 'Awaiting approval', in_progress: 'In progress', stages: 'Stages', approval_log: 'Approvals',
  approver: 'Approver', timers: 'Reminders and alarms', pending: 'Pending', fired: 'Fired',
  negative_records: 'Negative records', overview: 'Open cases per unit', open_count: 'Open', overdue_count: 'Overdue',
  working: 'working days', calendar: 'calendar days', extensions: 'Extensions',
  no_approvals: 'Nothing is waiting for your approval', log_opened: 'Opened', log_submitted: 'Submitted for approval',
  log_approved: 'Approved', log_advanced: 'Moved on', log_extended: 'Extended', log_closed: 'Closed',
  log_overdue: 'Overdue alarm', log_reminder: 'Deadline reminder', case: 'Case', comma_hint: 'comma-separated',
  subject_kind: 'Subject kind', period: 'Period', prev: 'Previous', next: 'Next', show: 'Show', recompute: 'Recompute',
  assessment_csv: 'Yearly assessment (CSV)', assessment_html: 'Yearly assessment (printable)', green: 'Green',
  blue: 'Blue', yellow: 'Yellow', orange: 'Orange', red: 'Red', score: 'Score',
  not_computed: 'Not computed for this period yet', trend: 'Trend', explanation: 'Explanation', terms: 'Deductions',
  indicator: 'Indicator', raw: 'Raw', value: 'Value', points: 'Points', records_behind: 'Underlying records',
  alerts: 'Warnings and alarms', warning: 'Warning', alarm: 'Alarm', rectification: 'Rectification case',
  history: 'Computation history', formula_version: 'Formula version', unit_size: 'Unit size',
  computed_at: 'Computed', size_default: '(nobody in the registries: the default size)', src_reports: 'Reports',
  src_cases: 'Cases', src_disciplined: 'Disciplined', src_overdue_alarms: 'Overdue alarms',
  src_negative_records: 'Negative records', src_indicators: 'Imported indicators', computed: '{n} units computed',
  back: 'Back', stage_now: 'Current stage', approved_by_me: 'You approved', wd_before: '{n} working days before',
};

export let lang = localStorage.getItem('jd.lang') === 'en' ? 'en' : 'zh';

/** The text for `key` in the current language (the key itself when unknown). */
export function t(key) {
  const d = lang === 'en' ? en : zh;
  return d[key] ?? zh[key] ?? key;
}

/** The text for `key` with `{name}` placeholders filled from `vars`. */
export function tf(key, vars) {
  return t(key).replace(/\{(\w+)\}/g, (m, k) => (k in vars ? String(vars[k]) : m));
}

/** A bilingual name such as `线索处置 clue handling` in the current language (whole when not split). */
export function localName(name) {
  const m = /^([^A-Za-z]+?)\s+([A-Za-z].*)$/.exec(name || '');
  if (!m) return name || '';
  return lang === 'en' ? m[2] : m[1];
}

/** Switches between Chinese and English. */
export function toggleLang() {
  lang = lang === 'en' ? 'zh' : 'en';
  localStorage.setItem('jd.lang', lang);
  document.documentElement.lang = lang === 'en' ? 'en' : 'zh-CN';
}
